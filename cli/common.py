"""Pieces shared by the commands: user-error handling, logging set-up and common options."""

from __future__ import annotations

import functools
import logging
import math
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from wsi_frgnet.config import SegmentConfig
from wsi_frgnet.errors import InputError


class Terminated(KeyboardInterrupt):
    """SIGTERM (what a cluster's scheduler sends before killing a job): stop as on Ctrl-C, so
    that temporary files go and journals stay."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


def handles_user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn an InputError (or a ValueError from a bad option value) into a one-line message
    and exit status 2; Ctrl-C into exit status 130 and SIGTERM into 143, after the command's
    own clean-up. No traceback for the user."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread() else None
        try:
            return command(*args, **kwargs)
        except InputError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)
        except Terminated:
            click.echo("Stopped (SIGTERM); the same command continues where it stopped.", err=True)
            sys.exit(143)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


def configure_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s: %(message)s")


quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars or progress messages.")
device_option = click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N.",
)


def threshold_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--score-threshold, --nms-threshold, --guide-threshold (default: the model's own)."""
    for name, text in reversed(
        [
            ("--score-threshold", "Minimum detection probability [default: the model's]."),
            ("--nms-threshold", "Box IoU above which overlapping detections are merged [default: the model's]."),
            ("--guide-threshold", "Drop nuclei whose predicted guide stays below this; 0 disables [default: the model's]."),
        ]
    ):
        command = click.option(name, type=click.FloatRange(0.0, 1.0), default=None, help=text)(command)
    return command


colour_alignment_option = click.option(
    "--colour-alignment/--no-colour-alignment", default=SegmentConfig.colour_alignment, show_default=True,
    help="Shift the network's input normalisation so that each slide's (or image's) mean tissue colour meets that of the "
         "model's training data: a lab's stain and scanner colours are read as the training data's were.",
)
tta_option = click.option(
    "--tta/--no-tta", default=SegmentConfig.tta, show_default=True,
    help="Test-time augmentation: run the network on each image or tile and on its three mirror images and average the four "
         "before finding nuclei (about 4x the network time, more accurate).",
)
model_option = click.option(
    "--model", "-m", "model_path", type=click.Path(path_type=Path), default=None,
    help="Model file (.pt) written by frgnet-wsi train or finetune [default: the model shipped with frgnet-wsi].",
)


def _positive_mpp(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise click.BadParameter(f"must be a positive number, not {value}")
    return value


def mpp_option(help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--mpp (µm/px), refused unless a positive finite number."""
    return click.option("--mpp", type=float, callback=_positive_mpp, help=help_text)


def precision_option(default: str, help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--precision auto|fp32|bf16|fp16 (wsi_frgnet.engine.devices decides what auto means)."""
    from wsi_frgnet.config import PRECISIONS

    return click.option("--precision", type=click.Choice(PRECISIONS), default=default, show_default=True, help=help_text)


def image_mpp(path: Path, given: float | None, model: Any) -> float | None:
    """The µm/px to take an image at: ``given`` (--mpp), else its TIFF resolution when plausible,
    else None (the image is taken at the model's µm/px, with a warning when the model knows it)."""
    if given is not None:
        return given
    from wsi_frgnet.io.slide import PLAUSIBLE_MICRONS_PER_PIXEL, image_microns_per_pixel

    found = image_microns_per_pixel(path)
    low, high = PLAUSIBLE_MICRONS_PER_PIXEL
    if found is not None and low <= found <= high:
        return found
    if model.checkpoint.microns_per_pixel is not None:
        logging.getLogger(__name__).warning(
            "%s: no µm/px in the file; taken at the model's %.3g µm/px (give --mpp otherwise)", path, model.checkpoint.microns_per_pixel
        )
    return None


overwrite_model_option = click.option(
    "--overwrite", is_flag=True, help="Replace --output if it exists (otherwise an existing file is an error)."
)


def refuse_to_replace(output: Path, overwrite: bool, resume: bool) -> None:
    """A model file that exists is replaced only with --overwrite (or continued with --resume)."""
    if output.exists() and not (overwrite or resume):
        raise InputError(f"{output}: exists; give --overwrite to replace it (or --resume to continue its run)")
