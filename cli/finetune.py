"""``frgnet-wsi finetune --model base.pt INPUT... -o tuned.pt``."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from wsi_frgnet.cli.common import (
    configure_logging,
    device_option,
    handles_user_errors,
    model_option,
    mpp_option,
    overwrite_model_option,
    precision_option,
    quiet_option,
    refuse_to_replace,
)

from wsi_frgnet.config import FREEZE_CHOICES, FinetuneConfig

_DEFAULTS = FinetuneConfig()


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@model_option
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True, help="Adapted model file to write.")
@click.option("--freeze-all-but", "keep", type=click.Choice(FREEZE_CHOICES), default=_DEFAULTS.keep, show_default=True,
              help="What stays trainable: guide (the Fourier guide head: the unlabelled setting), heads (all heads), "
                   "decoder (decoder and heads), none (train everything). Without annotations only 'guide' can learn.")
@click.option("--input-statistics/--no-input-statistics", default=_DEFAULTS.input_statistics,
              help="First shift the model's input normalisation so that the inputs' mean tissue colour meets that of its "
                   "training data (no training; recorded in the output) [default: on without annotations, off with them].")
@click.option("--tiles-per-slide", type=click.IntRange(min=1), default=_DEFAULTS.tiles_per_slide, show_default=True,
              help="Random tiles per input (seeded): tissue tiles, or tiles overlapping the annotations.")
@click.option("--tile-size", type=int, default=_DEFAULTS.tile_size, show_default=True, help="Tile side, px at the model's resolution (multiple of 32).")
@click.option("--epochs", type=click.IntRange(min=1), default=_DEFAULTS.epochs, show_default=True, help="Passes over the sampled tiles.")
@click.option("--batch-size", type=click.IntRange(min=1), default=_DEFAULTS.batch_size, show_default=True, help="Tiles per optimisation step.")
@click.option("--learning-rate", type=float, default=_DEFAULTS.learning_rate, show_default=True,
              help="AdamW peak rate. 1e-3 degraded the guide in our domain-shift experiment (docs/RESULTS.md).")
@mpp_option("µm/px of the inputs, overriding (or replacing missing) metadata.")
@click.option("--seed", type=click.IntRange(min=0), default=_DEFAULTS.seed, show_default=True, help="Seed of the tile sample and the training.")
@click.option("--workers", type=click.IntRange(min=0), default=_DEFAULTS.workers, show_default=True, help="Data-loading processes.")
@precision_option(_DEFAULTS.precision, "Training precision; auto: bf16 on GPUs and CPUs that compute it natively, else fp32.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run whose state lies beside --output.")
@overwrite_model_option
@device_option
@quiet_option
@handles_user_errors
def finetune(inputs: tuple[Path, ...], model_path: Path | None, output: Path, keep: str, input_statistics: bool | None, tiles_per_slide: int, tile_size: int, epochs: int,
             batch_size: int, learning_rate: float, mpp: float | None, seed: int, workers: int, precision: str, resume: bool, overwrite: bool, device: str,
             quiet: bool) -> None:
    """Adapt a model to a lab's own slides or images (INPUT: slides, images, folders of
    images, or training-data folders with images/ and labels/ as for train).

    Without annotations the model's input normalisation is first shifted so that the inputs'
    mean tissue colour meets that of its training data (--no-input-statistics: not), then only
    the Fourier guide head trains, on the inputs' own Fourier guide (the method's unlabelled
    setting). segment, predict and evaluate already align every slide's colours on their own
    (--colour-alignment, on by default), which recovered as much on our shift benchmarks as
    the first step and gives the same normalisation; the second step changed nothing
    measurable there (docs/RESULTS.md).

    Annotations: NAME.geojson (or NAME.geojson.gz) beside NAME.svs, NAME.png, ..., a QuPath
    export in QuPath's coordinates; or the labels/ of a training-data folder. With them,
    --freeze-all-but heads|decoder|none trains those modules with the full training loss,
    and guide trains the guide head on the labels' guide target. QuPath annotation objects
    that hold smaller objects (or are classified Region*) mark the reviewed area: nuclei
    outside it are not read, and its outside is never taught as background. Without such
    regions the nuclei are a partial annotation: unlabelled nuclei are not taught as
    background either. Inputs must be all annotated or all unannotated.

    Frozen modules keep their weights and BatchNorm statistics. The output loads and segments
    like any other model and records its parent (file hash), what was frozen, the annotation
    files and the tiles it saw.
    """
    configure_logging(quiet)
    from wsi_frgnet.engine.devices import resolve_device
    from wsi_frgnet.engine.inference import load_model
    from wsi_frgnet.errors import InputError
    from wsi_frgnet.train.finetune import finetune as adapt
    from wsi_frgnet.train.finetune import sample_tiles
    from wsi_frgnet.train.loop import TrainingRun

    try:
        settings = FinetuneConfig(keep=keep, input_statistics=input_statistics, tiles_per_slide=tiles_per_slide, tile_size=tile_size, epochs=epochs,
                                  batch_size=batch_size, learning_rate=learning_rate, seed=seed, workers=workers, precision=precision)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    if not output.parent.is_dir():
        raise InputError(f"{output}: cannot write, output folder {output.parent} does not exist")
    refuse_to_replace(output, overwrite, resume)
    model = load_model(model_path, resolve_device(device))
    sample = sample_tiles(list(inputs), model, tiles_per_slide, tile_size, seed, mpp)
    checkpoint = model.checkpoint
    run = TrainingRun(
        output=output, model_config=checkpoint.model_config, training=settings.training(), postprocess=checkpoint.postprocess,
        microns_per_pixel=checkpoint.microns_per_pixel, mean=checkpoint.mean, std=checkpoint.std, device=resolve_device(device), resume=resume, quiet=quiet,
        provenance={"command": " ".join(["frgnet-wsi", *sys.argv[1:]])},
    )
    align = (not sample.annotated) if settings.input_statistics is None else settings.input_statistics
    summary = adapt(run, model, model.path, sample, keep, input_statistics=align)
    kind = "annotated" if sample.annotated else "unlabelled"
    click.echo(f"Wrote {output}: adapted on {len(sample.tiles)} {kind} tiles in {summary['seconds'] / 60:.1f} min.")
