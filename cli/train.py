"""``frgnet-wsi train DATA_DIR -o model.pt``."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from wsi_frgnet.cli.common import (
    configure_logging,
    device_option,
    handles_user_errors,
    mpp_option,
    overwrite_model_option,
    precision_option,
    quiet_option,
    refuse_to_replace,
)

from wsi_frgnet.config import (
    ENCODERS,
    GUIDE_SOURCES,
    GUIDE_MODES,
    PARTIAL_RULES,
    ModelConfig,
    TargetConfig,
    TrainingConfig,
    default_guide_mode,
)

_DEFAULTS = TrainingConfig()


@click.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True, help="Model file to write (best on validation, else last).")
@click.option("--validation", type=click.Path(path_type=Path), help="Validation data folder, or a text file of image names of DATA_DIR to hold out.")
@click.option("--validation-fraction", type=float, help="Hold out this fraction of DATA_DIR's images at random (seeded).")
@click.option("--epochs", type=int, default=_DEFAULTS.epochs, show_default=True, help="Passes over the training images (about as many crop pixels per epoch as they hold).")
@click.option("--batch-size", type=int, default=_DEFAULTS.batch_size, show_default=True, help="Crops per optimisation step.")
@click.option("--learning-rate", type=float, default=_DEFAULTS.learning_rate, show_default=True, help="AdamW peak learning rate.")
@click.option("--warmup-epochs", type=float, default=_DEFAULTS.warmup_epochs, show_default=True, help="Linear warm-up, then cosine decay.")
@click.option("--crop-size", type=int, default=_DEFAULTS.crop_size, show_default=True, help="Training crop side, px (multiple of 32).")
@mpp_option("µm/px of the data (default: from DATA_DIR/manifest.json); stored in the model.")
@click.option("--seed", type=click.IntRange(min=0), default=_DEFAULTS.seed, show_default=True, help="Seed of the crops, augmentation, initial weights and kept annotations.")
@click.option("--validate-every", type=int, default=_DEFAULTS.validate_every, show_default=True, help="Epochs between validation passes.")
@click.option("--workers", type=click.IntRange(min=0), default=_DEFAULTS.workers, show_default=True, help="Data-loading processes (0: in the main process).")
@click.option("--architecture", type=click.Choice(["default", "tiny"]), default="default", show_default=True, help="Network size; tiny is for tests and smoke runs.")
@click.option("--encoder", type=click.Choice(ENCODERS), default=ModelConfig.encoder, show_default=True,
              help="resnet: trained from scratch; efficientnet-lite0: starts from ImageNet weights (needs the train extra).")
@click.option("--antialias/--no-antialias", default=ModelConfig.antialias, show_default=True,
              help="Blur before each stride-2 step of the resnet encoder, so that outputs move less when the image shifts by a pixel.")
@click.option("--fourier-order", type=click.IntRange(min=1), default=None,
              help="Elliptic Fourier order of the contours (default: the architecture's, 12 for default).")
@click.option("--keep-fraction", type=click.FloatRange(0.0, 1.0, min_open=True), default=_DEFAULTS.keep_fraction, show_default=True,
              help="Keep this seeded random share of each image's nuclei as annotations (weak supervision; implies --guide hard).")
@click.option("--partial-rule", type=click.Choice(PARTIAL_RULES), default=TargetConfig.partial_rule, show_default=True,
              help="With partial labels: which unlabelled cells are never taught as background: guide (the paper's: half the cell "
                   "guide-positive) or haematoxylin (optical density above the crop's Otsu threshold).")
@click.option("--guide-source", type=click.Choice(GUIDE_SOURCES), default=TargetConfig.guide_source, show_default=True,
              help="Image plane the Fourier guide is a high-pass of: luminance (the paper's) or haematoxylin optical density.")
@click.option("--guide", type=click.Choice(GUIDE_MODES), default=None,
              help="Fourier guide target: soft (default), hard (default with --keep-fraction < 1), none turns the guide module off.")
@click.option("--scanner-augmentation/--no-scanner-augmentation", default=_DEFAULTS.scanner_augmentation, show_default=True,
              help="Also augment with what scanners do: resolution loss (x0.5-0.9), blur, JPEG (quality 50-90), brightness and contrast.")
@click.option("--scale-jitter", type=click.FloatRange(0.0, 0.75, max_open=True), default=_DEFAULTS.scale_jitter, show_default=True,
              help="Resample each crop by a random factor in [1 - S, 1 + S], so the model works across that range of µm/px "
                   "(0.3: from the data's µm/px to about 1.4 times it, e.g. 20x slides at 0.35 µm/px).")
@click.option("--fibre-augmentation/--no-fibre-augmentation", default=_DEFAULTS.fibre_augmentation, show_default=True,
              help="Draw thin dark fibres (like keratin flakes and collagen edges) over the background of half the crops, "
                   "taught as background.")
@click.option("--weight-average", type=click.FloatRange(0.0, 1.0, max_open=True), default=_DEFAULTS.weight_average, show_default=True,
              help="Validate and save an exponential moving average of the weights with this decay per step "
                   "(e.g. 0.999; 0: the trained weights themselves).")
@click.option("--contrastive/--no-contrastive", default=ModelConfig.contrastive, show_default=True, help="Guide-based instance-level contrastive loss (GILC).")
@precision_option(_DEFAULTS.precision, "auto: bf16 on GPUs and CPUs that compute it natively, else fp32 (fp16 runs with loss scaling).")
@click.option("--mixed-precision/--no-mixed-precision", default=None, hidden=True, help="Old name: --no-mixed-precision is --precision fp32.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run whose state lies beside --output.")
@overwrite_model_option
@device_option
@quiet_option
@handles_user_errors
def train(data_dir: Path, output: Path, validation: Path | None, validation_fraction: float | None, epochs: int, batch_size: int,
          learning_rate: float, warmup_epochs: float, crop_size: int, mpp: float | None, seed: int, validate_every: int,
          workers: int, architecture: str, encoder: str, antialias: bool, fourier_order: int | None, keep_fraction: float, partial_rule: str, guide_source: str, guide: str | None, scanner_augmentation: bool, scale_jitter: float, fibre_augmentation: bool, weight_average: float, contrastive: bool, precision: str, mixed_precision: bool | None, resume: bool, overwrite: bool,
          device: str, quiet: bool) -> None:
    """Train an FrGNet on DATA_DIR (images/ and labels/ with the same file stems).

    Writes the model (best validation PQ when there is validation data), its per-epoch
    metrics log (<output>.log.jsonl) and a resumable state (<output>.resume.pt).
    """
    configure_logging(quiet)
    from wsi_frgnet.engine.devices import resolve_device  # imports torch
    from wsi_frgnet.train.loop import TrainingRun, train_from_folder

    try:
        if architecture == "tiny":
            if encoder != ModelConfig.encoder:
                raise click.BadParameter(f"the tiny architecture has its own small encoder; --encoder {encoder} needs "
                                         "--architecture default", param_hint="--encoder")
            base = ModelConfig.tiny()
        else:
            base = ModelConfig.efficientnet_lite0() if encoder == "efficientnet-lite0" else ModelConfig()
        if guide is None:
            guide = default_guide_mode(keep_fraction)
        if mixed_precision is False:
            precision = "fp32"
        model_config = ModelConfig(**{**vars(base), "guide": guide, "contrastive": contrastive,
                                      "fourier_order": fourier_order or base.fourier_order,
                                      "antialias": antialias})
        training = TrainingConfig(
            epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, warmup_epochs=warmup_epochs,
            crop_size=crop_size, seed=seed, validate_every=validate_every, workers=workers,
            precision=precision, keep_fraction=keep_fraction, scanner_augmentation=scanner_augmentation,
            scale_jitter=scale_jitter, fibre_augmentation=fibre_augmentation, weight_average=weight_average,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    refuse_to_replace(output, overwrite, resume)
    run = TrainingRun(
        output=output, model_config=model_config, training=training, targets=TargetConfig(partial_rule=partial_rule, guide_source=guide_source), microns_per_pixel=mpp,
        device=resolve_device(device), resume=resume, quiet=quiet,
        provenance={"command": " ".join(["frgnet-wsi", *sys.argv[1:]])},
    )
    summary = train_from_folder(run, data_dir, validation, validation_fraction)
    best = summary["best_pq"]
    detail = f"best validation PQ {best:.3f}" if best >= 0 else "no validation data"
    click.echo(f"Wrote {output}: {detail}, {summary['seconds'] / 60:.1f} min.")
