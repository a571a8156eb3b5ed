"""``frgnet-wsi``: the click group. Subcommands are imported only when run, so that
``frgnet-wsi --help`` answers at once (torch is imported by the commands that need it)."""

from __future__ import annotations

import importlib

import click

from wsi_frgnet import __version__

# name → (module, function, one-line help shown by ``frgnet-wsi --help``)
COMMANDS = {
    "guide": ("wsi_frgnet.cli.guide", "guide", "Training-free Fourier guide of an image (nuclei light up)."),
    "train": ("wsi_frgnet.cli.train", "train", "Train a model on labelled images."),
    "finetune": ("wsi_frgnet.cli.finetune", "finetune", "Adapt a model to another lab's slides, unlabelled or annotated."),
    "evaluate": ("wsi_frgnet.cli.evaluate", "evaluate", "PQ, DQ, SQ and AJI of a model on labelled images."),
    "segment": ("wsi_frgnet.cli.segment", "segment", "Segment whole slides into QuPath GeoJSON."),
    "predict": ("wsi_frgnet.cli.predict", "predict", "Segment images: label maps, guide masks and overlays."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, function, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), function)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, _, short) in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="frgnet-wsi")
def main() -> None:
    """Find every cell nucleus in H&E images and whole slides (FrGNet)."""
