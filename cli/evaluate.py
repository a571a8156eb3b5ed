"""``frgnet-wsi evaluate --model model.pt DATA_DIR [--json out.json]``."""

from __future__ import annotations

import logging
from pathlib import Path

import click
from wsi_frgnet.cli.common import (
    colour_alignment_option,
    configure_logging,
    device_option,
    handles_user_errors,
    model_option,
    mpp_option,
    precision_option,
    quiet_option,
    threshold_options,
    tta_option,
)


@click.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@model_option
@click.option("--baseline", type=click.Choice(["guide"]), help="Score the training-free Fourier guide instead of a model.")
@mpp_option("µm/px of every image [default: the folder's manifest.json, else the model's]; images are resampled to the model's µm/px.")
@precision_option("fp32", "Inference precision (fp32 by default, so that scores are the same on every machine).")
@colour_alignment_option
@tta_option
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write mean and per-image scores as JSON.")
@threshold_options
@device_option
@quiet_option
@handles_user_errors
def evaluate(data_dir: Path, model_path: Path | None, baseline: str | None, mpp: float | None, precision: str, colour_alignment: bool, tta: bool, json_path: Path | None,
             score_threshold: float | None, nms_threshold: float | None, guide_threshold: float | None, device: str, quiet: bool) -> None:
    """Score a model on DATA_DIR (images/ + labels/): PQ = DQ x SQ at IoU > 0.5, and AJI.

    The figures are means over images (as in the FrGNet paper); --json adds each image's.
    """
    configure_logging(quiet)
    if model_path is not None and baseline is not None:
        raise click.UsageError("give either --model or --baseline, not both")
    import orjson

    from wsi_frgnet.errors import InputError
    from wsi_frgnet.eval.evaluation import evaluate_folder
    from wsi_frgnet.io.atomic import atomic_write

    if json_path is not None and not json_path.parent.is_dir():
        raise InputError(f"{json_path}: cannot write, folder {json_path.parent} does not exist")

    if baseline == "guide":
        from wsi_frgnet.model.guide import guide_instances

        def segment(rgb, _mpp):
            return guide_instances(rgb)
    else:
        from wsi_frgnet.engine.devices import resolve_device
        from wsi_frgnet.engine.inference import load_model
        from wsi_frgnet.eval.evaluation import seen_in_training
        from wsi_frgnet.io.data_folder import list_labelled_images

        model = load_model(model_path, resolve_device(device), score_threshold, nms_threshold, guide_threshold, precision, colour_alignment, tta)
        names = [item.name for item in list_labelled_images(data_dir)]
        seen = seen_in_training(model.checkpoint.provenance, names)
        if seen:
            logging.getLogger(__name__).warning(
                "%d of %d images of %s were in the training set of %s (%s): their scores are optimistic",
                len(seen), len(names), data_dir, model.path.name, ", ".join(seen[:3]) + (", ..." if len(seen) > 3 else ""))
        segment = model.segment
    report = evaluate_folder(segment, data_dir, quiet=quiet, microns_per_pixel=mpp)
    mean = report.mean
    click.echo(f"images  {mean['n_images']}")
    for key in ("pq", "dq", "sq", "aji"):
        click.echo(f"{key.upper():<6}  {mean[key]:.4f}")
    if json_path is not None:
        text = orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
        atomic_write(json_path, lambda handle: handle.write(text))
        click.echo(f"Wrote {json_path}")
