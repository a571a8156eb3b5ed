"""Unlabelled-domain adaptation (METHOD.md §6): train only the Fourier guide head of a model
on tiles of a lab's own slides or images, with the annotation-free Fourier guide as target.

Tiles are sampled from tissue at the model's µm/px, read exactly as ``segment`` reads them.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wsi_frgnet.checkpoint import file_sha256
from wsi_frgnet.config import FREEZE_CHOICES, SegmentConfig, TargetConfig
from wsi_frgnet.dataset_folder import find_images
from wsi_frgnet.errors import InputError
from wsi_frgnet.inference import LoadedModel
from wsi_frgnet.losses import BatchTargets, guide_loss
from wsi_frgnet.model import FrgNet, NetworkOutput
from wsi_frgnet.pipeline import plan_slide, read_tile
from wsi_frgnet.slide import open_slide
from wsi_frgnet.training import TrainingRun, optimise
from wsi_frgnet.training_data import LabelledArray, RandomCrops

logger = logging.getLogger(__name__)



def trainable_modules(model: FrgNet, keep: str) -> list[nn.Module]:
    """Modules left trainable by ``--freeze-all-but keep``: the guide head; all heads (and
    the contrastive projector); the decoder and all heads; or everything (``none``)."""
    heads = [model.score_head, model.location_head, model.fourier_head, model.refinement_head, model.guide_head, model.projector]
    chosen = {
        "guide": [model.guide_head],
        "heads": heads,
        "decoder": [model.decoder, *heads],
        "none": [model],
    }.get(keep)
    if chosen is None:
        raise InputError(f"--freeze-all-but {keep}: unknown; choose one of {', '.join(FREEZE_CHOICES)}")
    modules = [module for module in chosen if module is not None]
    if keep == "guide" and not modules:
        raise InputError("--freeze-all-but guide: this model has no Fourier guide head (trained with --guide none)")
    return modules


def unlabelled_guide_loss(
    model: FrgNet, output: NetworkOutput, targets: BatchTargets, loss_config: Any, input_size: tuple[int, int], generator: Any
) -> dict[str, torch.Tensor]:
    """Without annotations only the guide head has a target: the image's own Fourier guide."""
    loss = guide_loss(output, targets.guide)
    return {"guide": loss, "total": loss}


@dataclass
class TileSample:
    """Unlabelled tiles (N, size, size, 3) uint8 at the model's resolution, and where from."""

    tiles: list[np.ndarray]
    sources: dict[str, int]  # input path → tiles taken from it


def input_files(inputs: list[Path]) -> list[Path]:
    """Slides and images named directly, plus the images of named folders."""
    files = []
    for path in inputs:
        path = Path(path)
        if path.is_dir():
            files.extend(find_images(path))
        elif path.exists():
            files.append(path)
        else:
            raise InputError(f"{path}: no such file or folder")
    return files


def sample_tiles(
    inputs: list[Path], model: LoadedModel, tiles_per_slide: int, tile_size: int, seed: int, microns_per_pixel: float | None
) -> TileSample:
    """Up to ``tiles_per_slide`` random tissue tiles of each input (slides or plain images),
    read at the model's µm/px. ``microns_per_pixel`` overrides the files' own values."""
    rng = np.random.default_rng(seed)
    config = SegmentConfig(tile_size=tile_size, context=0)
    tiles, sources = [], {}
    for path in input_files(inputs):
        with open_slide(path, microns_per_pixel) as slide:
            plan = plan_slide(slide, model, config)
            chosen = rng.permutation(len(plan.tiles))[:tiles_per_slide]
            tiles.extend(read_tile(plan, plan.tiles[i]) for i in sorted(chosen))
        sources[str(path)] = len(chosen)
        logger.info("%s: %d tiles", path, len(chosen))
    if not tiles:
        raise InputError(f"no tissue found in any input ({', '.join(map(str, inputs))}); nothing to fine-tune on")
    return TileSample(tiles, sources)


def finetune(run: TrainingRun, model: LoadedModel, parent: Path, sample: TileSample, keep: str) -> dict[str, Any]:
    """Adapt ``model`` on unlabelled tiles, training only what ``keep`` names; writes
    ``run.output`` (parent hash, what was frozen and the data recorded in its provenance)."""
    if keep != "guide":
        raise InputError(f"--freeze-all-but {keep}: needs annotated inputs; without annotations only the guide head can learn")
    network = copy.deepcopy(model.network).to(memory_format=torch.contiguous_format)  # the caller's model stays as it is
    modules = trainable_modules(network, keep)
    images = [LabelledArray(f"tile{i}", tile, np.zeros(tile.shape[:2], dtype=np.int32)) for i, tile in enumerate(sample.tiles)]
    # No augmentation: the point is to learn this lab's own stain and scanner.
    dataset = RandomCrops(images, run.training.crop_size, run.model_config, TargetConfig(), run.training.seed, augment=False)
    run.provenance.update(
        parent_model=parent.name,
        parent_sha256=file_sha256(parent),
        trainable=keep,
        frozen="everything but the guide head, BatchNorm statistics included",
        finetune_inputs=sample.sources,
    )
    return optimise(run, network, dataset, [], unlabelled_guide_loss, trainable=modules)
