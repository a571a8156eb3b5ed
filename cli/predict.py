"""``frgnet-wsi predict IMAGE... -o OUT_DIR``."""

from __future__ import annotations

from pathlib import Path

import click
from wsi_frgnet.cli.common import (
    colour_alignment_option,
    configure_logging,
    device_option,
    handles_user_errors,
    image_mpp,
    model_option,
    mpp_option,
    precision_option,
    quiet_option,
    threshold_options,
    tta_option,
)

from wsi_frgnet.config import SegmentConfig


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--output", "-o", "output_dir", type=click.Path(path_type=Path), required=True, help="Folder for the results (created if missing).")
@model_option
@mpp_option("µm/px of the images [default: from TIFF resolution tags, else taken to be the model's]; they are resampled to the model's µm/px and results mapped back.")
@precision_option(SegmentConfig.precision, "Inference precision; auto: bf16 on CUDA (fp16 where bf16 is missing) and on CPUs with native bf16, else fp32.")
@colour_alignment_option
@tta_option
@click.option("--label-format", type=click.Choice(["png", "tif"]), default="png", show_default=True, help="16-bit PNG or int32 TIFF label maps.")
@threshold_options
@device_option
@quiet_option
@handles_user_errors
def predict(images: tuple[Path, ...], output_dir: Path, model_path: Path | None, mpp: float | None, precision: str, colour_alignment: bool, tta: bool, label_format: str,
            score_threshold: float | None, nms_threshold: float | None, guide_threshold: float | None, device: str, quiet: bool) -> None:
    """Segment each IMAGE (PNG, JPEG or TIFF) and write, per image, into OUTPUT:

    NAME_labels.png|tif (instance label map, 0 = background), NAME_guide.png (predicted
    guide, 0-255) and NAME_overlay.png (outlines over the image).
    """
    configure_logging(quiet)
    import numpy as np
    from tqdm.auto import tqdm

    from wsi_frgnet.engine.devices import resolve_device
    from wsi_frgnet.engine.inference import load_model
    from wsi_frgnet.engine.overlay import draw_outlines
    from wsi_frgnet.errors import InputError
    from wsi_frgnet.io.images import read_rgb, write_label_map, write_png

    stems = [path.stem for path in images]
    if len(set(stems)) < len(stems):
        raise click.BadParameter("several images share a file name; their results would overwrite each other", param_hint="IMAGES")
    model = load_model(model_path, resolve_device(device), score_threshold, nms_threshold, guide_threshold, precision, colour_alignment, tta)
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"{output_dir}: exists and is not a folder")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{output_dir}: cannot create folder ({exc.strerror or type(exc).__name__})") from exc
    total = 0
    for path in tqdm(images, desc="predicting", unit="image", disable=quiet):
        rgb = read_rgb(path)
        prediction = model.predict(rgb, image_mpp(path, mpp, model))
        stem = output_dir / path.stem
        write_label_map(stem.with_name(f"{path.stem}_labels.{label_format}"), prediction.label_map())
        if prediction.guide is not None:
            write_png(stem.with_name(f"{path.stem}_guide.png"), np.round(prediction.guide * 255).astype(np.uint8))
        write_png(stem.with_name(f"{path.stem}_overlay.png"), draw_outlines(rgb, prediction.nuclei))
        total += len(prediction.nuclei)
    click.echo(f"{total} nuclei in {len(images)} image(s); results in {output_dir}")
