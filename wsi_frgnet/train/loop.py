"""The training loop of ``frgnet-wsi train``: optimisation, validation, logs, checkpoints, resume."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from wsi_frgnet.config import (
    DEFAULT_MEAN,
    DEFAULT_STD,
    LossConfig,
    ModelConfig,
    PostprocessConfig,
    TargetConfig,
    TrainingConfig,
    config_to_dict,
    default_guide_mode,
)
from wsi_frgnet.engine.devices import autocast_dtype
from wsi_frgnet.engine.inference import images_to_tensor, predict_image
from wsi_frgnet.engine.tissue import tissue_rgb_mean
from wsi_frgnet.errors import InputError
from wsi_frgnet.eval.metrics import mean_scores, score_instances
from wsi_frgnet.io.atomic import atomic_write
from wsi_frgnet.io.data_folder import (
    LabelledImage,
    list_labelled_images,
    load_pair,
    load_unknown,
    manifest_microns_per_pixel,
    split_validation,
)
from wsi_frgnet.model import FrgNet
from wsi_frgnet.model.losses import frgnet_loss
from wsi_frgnet.model.model_file import (
    ModelCheckpoint,
    read_payload,
    save_checkpoint,
    write_payload,
)
from wsi_frgnet.train.crops import LabelledArray, RandomCrops, collate
from wsi_frgnet.train.pretrained import load_imagenet_encoder
from wsi_frgnet.train.weight_average import WeightAverage

logger = logging.getLogger(__name__)


@dataclass
class TrainingRun:
    """Everything one ``train`` call needs besides the data."""

    output: Path
    model_config: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    losses: LossConfig = field(default_factory=LossConfig)
    targets: TargetConfig = field(default_factory=TargetConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    microns_per_pixel: float | None = None
    mean: tuple[float, float, float] = DEFAULT_MEAN  # input normalisation (fine-tuning: the parent's)
    std: tuple[float, float, float] = DEFAULT_STD
    data_mean: tuple[float, float, float] | None = None  # mean RGB of the training tissue; None: taken from the images
    coarsest_microns_per_pixel: float | None = None  # fine-tuning: the parent's; training: from the scale jitter
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    provenance: dict[str, Any] = field(default_factory=dict)
    resume: bool = False
    quiet: bool = False

    @property
    def state_path(self) -> Path:
        """Resumable training state, beside the output: ``model.pt`` → ``model.resume.pt``."""
        return self.output.with_name(self.output.stem + ".resume.pt")

    @property
    def log_path(self) -> Path:
        """Per-epoch metrics, one JSON object a line: ``model.pt`` → ``model.log.jsonl``."""
        return self.output.with_name(self.output.stem + ".log.jsonl")


def learning_rate_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up from ~0 to 1, then cosine decay to 0.01 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress))


def validate(run: TrainingRun, model: FrgNet, images: list[LabelledArray], autocast: torch.dtype | None) -> dict[str, float]:
    """Mean PQ / DQ / SQ / AJI over whole-image predictions."""
    model.eval()
    scores = [
        score_instances(image.labels, predict_image(model, image.rgb, run.postprocess, run.mean, run.std, autocast).label_map())
        for image in images
    ]
    return mean_scores(scores)


def _run_identity(run: TrainingRun, trainable: list[str]) -> dict[str, Any]:
    """What must not change between a run and its resumption (epochs may grow)."""
    training = config_to_dict(run.training)
    training.pop("epochs")
    return {
        "model_config": config_to_dict(run.model_config),
        "training": training,
        "targets": config_to_dict(run.targets),
        "losses": config_to_dict(run.losses),
        "trainable": trainable,
        "parent_sha256": run.provenance.get("parent_sha256"),
        "normalisation": [list(run.mean), list(run.std)],
    }


def _save_state(
    run: TrainingRun, model: FrgNet, average: WeightAverage | None, optimizer: torch.optim.Optimizer, generator: torch.Generator,
    epoch: int, step: int, best: float, identity: dict[str, Any],
) -> None:
    contents = {
        "identity": identity,
        "model": model.state_dict(),
        "weight_average": None if average is None else average.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "epochs_done": epoch,
        "step": step,
        "best_pq": best,
    }
    write_payload(run.state_path, "training-state", contents)


def _checkpoint(run: TrainingRun, model: FrgNet, extra: dict[str, Any]) -> ModelCheckpoint:
    return ModelCheckpoint(
        model_config=run.model_config,
        state_dict=model.state_dict(),
        microns_per_pixel=run.microns_per_pixel,
        postprocess=run.postprocess,
        mean=run.mean,
        std=run.std,
        provenance={**run.provenance, **extra},
        data_mean=run.data_mean,
        coarsest_microns_per_pixel=run.coarsest_microns_per_pixel,
    )


def train(run: TrainingRun, train_images: list[LabelledArray], validation_images: list[LabelledArray]) -> dict[str, Any]:
    """Train, validating every ``validate_every`` epochs; write the best model (by validation
    PQ, or the last one without validation data) to ``run.output``. Returns a summary."""
    if run.model_config.guide == "soft" and default_guide_mode(run.training.keep_fraction) == "hard":
        logger.warning("partial labels (keep fraction %g) with the soft guide: the method teaches the hard guide "
                       "here (the default when the guide is not chosen)", run.training.keep_fraction)
    if run.model_config.uses_guide and run.postprocess.guide_threshold > 0 and (
        run.training.keep_fraction < 1.0 or any(image.partial for image in train_images)
    ):
        # Partial labels teach the guide head bright only over the labelled nuclei: on the others it
        # stays low and the guide filter would drop them (docs/RESULTS.md, partial annotations).
        logger.info("partial labels: the model is saved with the guide filter off (guide threshold 0)")
        run.postprocess = replace(run.postprocess, guide_threshold=0.0)
    run.provenance.setdefault("targets", config_to_dict(run.targets))
    run.provenance.setdefault("losses", config_to_dict(run.losses))
    if run.data_mean is None:
        run.data_mean = tissue_rgb_mean(image.rgb for image in train_images)
    if run.training.scale_jitter and run.microns_per_pixel is not None:
        # crops zoomed by 1 - s show the nuclei as an image at µm/px / (1 - s) would
        run.coarsest_microns_per_pixel = round(run.microns_per_pixel / (1 - run.training.scale_jitter), 4)
    torch.manual_seed(run.training.seed)
    model = FrgNet(run.model_config)
    if run.model_config.encoder == "efficientnet-lite0":
        load_imagenet_encoder(model.encoder)
    dataset = RandomCrops(
        train_images, run.training.crop_size, run.model_config, run.targets, run.training.seed,
        keep_fraction=run.training.keep_fraction, scanner=run.training.scanner_augmentation,
        scale_jitter=run.training.scale_jitter, fibres=run.training.fibre_augmentation,
    )
    return optimise(run, model, dataset, validation_images, frgnet_loss, trainable=None)


LossFunction = Callable[..., dict[str, torch.Tensor]]  # (model, output, targets, loss config, input size, generator)


def optimise(
    run: TrainingRun,
    model: FrgNet,
    dataset: RandomCrops,
    validation_images: list[LabelledArray],
    loss_function: LossFunction,
    trainable: list[nn.Module] | None,
) -> dict[str, Any]:
    """The optimisation loop shared by ``train`` and fine-tuning.

    Only the parameters of ``trainable`` modules move (all of them when None); every other
    module stays in eval mode, so its BatchNorm statistics stay frozen too.
    """
    config = run.training
    model = model.to(run.device, memory_format=torch.channels_last)  # METHOD_NOTES §8
    modules = [model] if trainable is None else trainable
    for parameter in model.parameters():
        parameter.requires_grad_(trainable is None)
    parameters = [p for module in modules for p in module.parameters()]
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, len(dataset) // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = max(1, int(config.warmup_epochs * steps_per_epoch))
    start_epoch, step, best_pq = 0, 0, -1.0
    generator = torch.Generator().manual_seed(config.seed)  # proposal and contrastive sampling
    dtype = autocast_dtype(config.precision, run.device, training=True)
    identity = _run_identity(run, [name for name, p in model.named_parameters() if p.requires_grad])
    identity["precision_used"] = "fp32" if dtype is None else str(dtype).removeprefix("torch.")  # 'auto' as resolved here
    # With a weight average, the average is what is validated and saved (the trained weights go on).
    average = WeightAverage(model, config.weight_average) if config.weight_average > 0 else None
    evaluated = model if average is None else average.module
    if run.resume:
        state = read_payload(run.state_path, "training-state")
        if state.get("identity") != identity:
            changed = sorted(k for k in identity if state.get("identity", {}).get(k) != identity[k])
            raise InputError(f"{run.state_path}: belongs to a run with other settings ({', '.join(changed)}); cannot resume")
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"])
            if average is not None:
                average.load_state_dict(state["weight_average"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise InputError(f"{run.state_path}: damaged training state ({type(exc).__name__})") from exc
        start_epoch, step, best_pq = state["epochs_done"], state["step"], state["best_pq"]
        _trim_log(run.log_path, start_epoch)
        logger.info("resuming after epoch %d of %d", start_epoch, config.epochs)
    # fp16 gradients underflow without loss scaling; bf16 and fp32 need none.
    scaler = torch.amp.GradScaler(run.device.type, enabled=dtype == torch.float16)
    if not run.resume:  # a fresh run starts a fresh log and forgets any older state
        run.log_path.unlink(missing_ok=True)
        run.state_path.unlink(missing_ok=True)
    input_size = (config.crop_size, config.crop_size)
    started = time.monotonic()
    last_scores: dict[str, float] = {}
    for epoch in range(start_epoch, config.epochs):
        epoch_start = time.monotonic()
        dataset.set_epoch(epoch)
        loader = DataLoader(
            dataset,
            batch_size=config.batch_size,
            shuffle=True,
            drop_last=len(dataset) >= config.batch_size,
            num_workers=config.workers,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(config.seed * 1000 + epoch),
        )
        model.eval()
        for module in modules:
            module.train()
        sums: dict[str, float] = {}
        batches = 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", disable=run.quiet, leave=False)
        for images, targets in bar:
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate * learning_rate_factor(step, warmup_steps, total_steps)
            inputs = images_to_tensor(images, run.mean, run.std, run.device)
            with torch.autocast(run.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                output = model(inputs)
            parts = loss_function(model, output, targets.to(run.device), run.losses, input_size, generator)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(parts["total"]).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(parameters, 10.0)
            scaler.step(optimizer)
            scaler.update()
            if average is not None:
                average.update(model)
            step += 1
            batches += 1
            for name, value in parts.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
            bar.set_postfix(loss=f"{sums['total'] / batches:.3f}")
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "learning_rate": optimizer.param_groups[0]["lr"],
            **{f"loss_{k}": v / max(1, batches) for k, v in sums.items()},
        }
        is_last = epoch + 1 == config.epochs
        if validation_images and ((epoch + 1) % config.validate_every == 0 or is_last):
            last_scores = validate(run, evaluated, validation_images, dtype)
            row.update({f"val_{k}": v for k, v in last_scores.items() if k in ("pq", "dq", "sq", "aji")})
            if last_scores["pq"] > best_pq:
                best_pq = last_scores["pq"]
                save_checkpoint(run.output, _checkpoint(run, evaluated, {"epochs": epoch + 1, "validation": row}))
        elif not validation_images and is_last:
            save_checkpoint(run.output, _checkpoint(run, evaluated, {"epochs": epoch + 1}))
        row["seconds"] = round(time.monotonic() - epoch_start, 1)
        _append_log(run.log_path, row)
        logger.info("epoch %d/%d: %s", epoch + 1, config.epochs, _format_row(row))
        if not run.quiet:
            tqdm.write(f"epoch {epoch + 1}/{config.epochs}: {_format_row(row)}")
        _save_state(run, model, average, optimizer, generator, epoch + 1, step, best_pq, identity)
    return {"best_pq": best_pq, "seconds": time.monotonic() - started, "last_validation": last_scores}


def _format_row(row: dict[str, Any]) -> str:
    keys = ["loss_total", "loss_score", "loss_contour", "loss_guide", "loss_contrastive", "val_pq", "val_aji", "seconds"]
    return " ".join(f"{k}={row[k]:.4g}" for k in keys if k in row)


def _trim_log(path: Path, epochs_done: int) -> None:
    """Keep only the log rows of the epochs a resumed state holds (a run killed after logging
    an epoch but before saving its state would otherwise log that epoch twice)."""
    if not path.exists():
        return
    rows = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [line for line in rows if orjson.loads(line).get("epoch", 0) <= epochs_done]
    text = "".join(line + "\n" for line in kept).encode()
    atomic_write(path, lambda handle: handle.write(text))


def _append_log(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(orjson.dumps(row).decode() + "\n")


def _load_array(item: LabelledImage) -> LabelledArray:
    """Image, labels and unknown-region mask (if any) of one data-folder item."""
    rgb, labels = load_pair(item)
    return LabelledArray(item.name, rgb, labels, load_unknown(item, rgb.shape))


def train_from_folder(
    run: TrainingRun, data_dir: Path, validation: Path | None = None, validation_fraction: float | None = None
) -> dict[str, Any]:
    """``train`` on a data folder (see ``dataset_folder``), with the validation set chosen by
    ``split_validation``. µm/px: ``run.microns_per_pixel``, else the folder's manifest."""
    items = list_labelled_images(data_dir)
    training_items, validation_items = split_validation(items, validation, validation_fraction, run.training.seed)
    if not run.output.parent.is_dir():
        raise InputError(f"{run.output}: cannot write, output folder {run.output.parent} does not exist")
    if run.output.is_dir():
        raise InputError(f"{run.output}: is a folder; give the model file to write")
    if run.microns_per_pixel is None:
        run.microns_per_pixel = manifest_microns_per_pixel(Path(data_dir))
    if run.microns_per_pixel is None:
        logger.warning("no µm/px given (--mpp) nor in %s/manifest.json: the model will not know its resolution", data_dir)
    train_images = [_load_array(item) for item in training_items]
    validation_images = [_load_array(item) for item in validation_items]
    for image in train_images:
        if image.labels.max() == 0:
            logger.warning("%s: label map has no nucleus", image.name)
    run.provenance.update(
        data=str(Path(data_dir).name),
        training_images=[item.name for item in training_items],
        validation_images=[item.name for item in validation_items],
    )
    logger.info("training on %d images, validating on %d", len(train_images), len(validation_images))
    return train(run, train_images, validation_images)
