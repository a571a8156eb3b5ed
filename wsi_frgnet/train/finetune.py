"""Fine-tuning a trained model on a lab's own slides or images.

Without annotations (unlabelled-domain adaptation, METHOD_NOTES.md §6) the input normalisation
can first be aligned with the tiles' colours (:func:`align_input_statistics`); then only the
Fourier guide head trains, on each tile's own annotation-free Fourier guide. With annotations (a QuPath GeoJSON
export beside each input, or a training-data folder; see ``annotated_tiles``) the modules
``--freeze-all-but`` leaves trainable learn with the full training loss and targets, or the
guide head alone with the training guide target of the labels.

Tiles are cut at the model's µm/px by the same code as ``segment`` (``plan_slide`` and
``read_tile``, context 0): random tissue tiles of unannotated inputs, random tiles that overlap
the annotations of annotated ones (seeded, up to ``tiles_per_slide`` per input). Inputs are
either all annotated or all unannotated.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wsi_frgnet.config import FREEZE_CHOICES, SegmentConfig, TargetConfig, config_from_dict
from wsi_frgnet.engine.colour import align_colours
from wsi_frgnet.engine.inference import LoadedModel
from wsi_frgnet.engine.planning import plan_slide, read_tile
from wsi_frgnet.errors import InputError
from wsi_frgnet.io.data_folder import (
    LabelledImage,
    find_images,
    list_labelled_images,
    load_pair,
    load_unknown,
)
from wsi_frgnet.io.slide import Slide, open_slide
from wsi_frgnet.model import FrgNet, NetworkOutput
from wsi_frgnet.model.losses import BatchTargets, frgnet_loss, guide_loss
from wsi_frgnet.model.model_file import file_sha256
from wsi_frgnet.train.annotated_tiles import (
    LabelMapLabels,
    PolygonLabels,
    annotation_beside,
    polygon_labels,
)
from wsi_frgnet.train.crops import LabelledArray, RandomCrops
from wsi_frgnet.train.loop import TrainingRun, optimise

logger = logging.getLogger(__name__)

# What stays frozen (parameters and BatchNorm statistics) for each ``--freeze-all-but`` choice.
FROZEN = {
    "guide": "everything but the guide head, BatchNorm statistics included",
    "heads": "the encoder and decoder, BatchNorm statistics included",
    "decoder": "the encoder, BatchNorm statistics included",
    "none": "nothing",
}


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


def guide_only_loss(
    model: FrgNet, output: NetworkOutput, targets: BatchTargets, loss_config: Any, input_size: tuple[int, int], generator: Any
) -> dict[str, torch.Tensor]:
    """The guide loss alone (``--freeze-all-but guide``): BCE against each crop's guide target,
    its own Fourier guide without annotations, the training guide target with them."""
    loss = guide_loss(output, targets.guide)
    return {"guide": loss, "total": loss}


@dataclass(frozen=True)
class FinetuneInput:
    """One slide or image to take tiles from, and its annotations, if any: a QuPath GeoJSON
    export beside it, or its entry in a training-data folder."""

    path: Path
    geojson: Path | None = None
    item: LabelledImage | None = None

    @property
    def annotated(self) -> bool:
        return self.geojson is not None or self.item is not None


def finetune_inputs(inputs: list[Path]) -> list[FinetuneInput]:
    """Slides and images named directly, the images of named folders (each with the GeoJSON
    beside it, if any), and the images of named training-data folders (with ``images/``).

    InputError for a missing path, and when some inputs are annotated and others are not.
    """
    found: list[FinetuneInput] = []
    for path in map(Path, inputs):
        if path.is_dir() and (path / "images").is_dir():
            found.extend(FinetuneInput(item.image_path, item=item) for item in list_labelled_images(path))
        elif path.is_dir():
            found.extend(FinetuneInput(image, annotation_beside(image)) for image in find_images(path))
        elif path.exists():
            found.append(FinetuneInput(path, annotation_beside(path)))
        else:
            raise InputError(f"{path}: no such file or folder")
    annotated = [entry for entry in found if entry.annotated]
    if annotated and len(annotated) < len(found):
        bare = next(entry for entry in found if not entry.annotated)
        raise InputError(
            f"{bare.path}: no annotations ({bare.path.stem}.geojson beside it) while {annotated[0].path} has some; "
            "fine-tune on annotated and unannotated inputs in separate runs"
        )
    return found


@dataclass
class TileSample:
    """Tiles at the model's resolution, (T, T, 3) uint8 with their labels (all background and
    ``annotated`` False without annotations), and where they came from, by input path."""

    tiles: list[LabelledArray] = field(default_factory=list)
    sources: dict[str, int] = field(default_factory=dict)  # tiles taken
    windows: dict[str, list[list[int]]] = field(default_factory=dict)  # their read rectangles (x, y, w, h), working px
    annotations: dict[str, dict[str, Any]] = field(default_factory=dict)  # annotation files and their rule

    @property
    def annotated(self) -> bool:
        return bool(self.annotations)


def _annotations(entry: FinetuneInput, slide: Slide, factor: float) -> PolygonLabels | LabelMapLabels:
    """The labels of an annotated input, ready to be cut into tiles."""
    if entry.geojson is not None:
        return polygon_labels(entry.geojson, slide, factor)
    assert entry.item is not None
    rgb, labels = load_pair(entry.item)
    files = {"file": str(entry.item.label_path), "unknown": None if entry.item.unknown_path is None else str(entry.item.unknown_path)}
    return LabelMapLabels(labels, load_unknown(entry.item, rgb.shape), factor, files)


def sample_tiles(
    inputs: list[Path], model: LoadedModel, tiles_per_slide: int, tile_size: int, seed: int, microns_per_pixel: float | None
) -> TileSample:
    """Up to ``tiles_per_slide`` random tiles of each input (slides, images, folders of them,
    training-data folders), read at the model's µm/px: tissue tiles without annotations, tiles
    overlapping the annotations with them. ``microns_per_pixel`` overrides the files' own
    values (and a data folder's manifest)."""
    rng = np.random.default_rng(seed)
    sample = TileSample()
    for entry in finetune_inputs(inputs):
        mpp = microns_per_pixel
        if mpp is None and entry.item is not None:
            mpp = entry.item.microns_per_pixel  # from the data folder's manifest
        with open_slide(entry.path, mpp) as slide:
            # Annotations say where to look: no tissue mask for annotated inputs.
            # Tiles from the region's corner: training needs their pixels, not outlines that match a slide run's.
            plan = plan_slide(slide, model, SegmentConfig(tile_size=tile_size, context=0, tissue_mask=not entry.annotated, colour_alignment=False), anchored=False, trim=False)
            labels = _annotations(entry, slide, plan.factor) if entry.annotated else None
            candidates = plan.tiles if labels is None else labels.candidate_tiles(plan.tiles)
            chosen = [candidates[i] for i in sorted(rng.permutation(len(candidates))[:tiles_per_slide])]
            for tile in chosen:
                rgb = np.ascontiguousarray(read_tile(plan, tile))  # kept for the whole run
                name = f"{entry.path.name}@{tile.read[0]},{tile.read[1]}"
                if labels is None:
                    sample.tiles.append(LabelledArray(name, rgb, np.zeros(rgb.shape[:2], dtype=np.int32)))
                else:
                    sample.tiles.append(LabelledArray(name, rgb, *labels.label(tile), partial=labels.partial))
        key = str(entry.path)
        sample.sources[key] = len(chosen)
        sample.windows[key] = [list(tile.read) for tile in chosen]
        if labels is not None:
            sample.annotations[key] = labels.description()
        source = "" if labels is None else f", labelled by {entry.geojson or entry.item.label_path}"
        logger.info("%s: %d tiles%s", entry.path, len(chosen), source)
    if not sample.tiles:
        raise InputError(f"no tissue found in any input ({', '.join(map(str, inputs))}); nothing to fine-tune on")
    return sample


def parent_targets(model: LoadedModel, fallback: TargetConfig) -> TargetConfig:
    """How the parent's training built its targets (guide source, partial rule, ...), from its
    provenance, so that fine-tuning teaches the same guide; ``fallback`` for files that do not
    record it (or record fields this version does not know)."""
    stored = model.checkpoint.provenance.get("targets")
    if not isinstance(stored, dict):
        return fallback
    try:
        return config_from_dict(TargetConfig, stored)
    except (ValueError, TypeError):  # UnknownFields is a ValueError
        logger.warning("the parent's target settings are not readable here; using the defaults")
        return fallback


def align_input_statistics(run: TrainingRun, model: LoadedModel, parent: Path, tiles: list[LabelledArray]) -> dict[str, Any]:
    """Shift ``run``'s input normalisation so that the tiles' mean tissue colour lands where the
    parent's training tissue did (per RGB channel: mean += tiles' mean - parent's data mean),
    and record the tiles' mean as the new data mean. Returns what was done, for the provenance.
    InputError when the parent records no data mean."""
    parent_mean = model.checkpoint.data_mean
    if parent_mean is None:
        raise InputError(f"{parent}: records no mean colour of its training data, which aligning the input statistics needs; "
                         "pass --no-input-statistics")
    alignment = align_colours(model.checkpoint.mean, parent_mean, [tile.rgb for tile in tiles])
    tiles_mean = alignment.tissue_mean
    run.mean = alignment.normalisation_mean
    run.data_mean = tiles_mean
    logger.info("input statistics: mean tissue RGB %s against the parent's %s",
                ", ".join(f"{v:.3f}" for v in tiles_mean), ", ".join(f"{v:.3f}" for v in parent_mean))
    return {"parent_data_mean": list(parent_mean), "data_mean": list(tiles_mean), "normalisation_mean": list(run.mean)}


def finetune(run: TrainingRun, model: LoadedModel, parent: Path, sample: TileSample, keep: str,
             input_statistics: bool = False) -> dict[str, Any]:
    """Fine-tune ``model`` on ``sample``, training only what ``keep`` names (frozen modules keep
    their BatchNorm statistics); writes ``run.output`` with its parent's hash, what was frozen
    and the data it saw in its provenance.

    ``guide``: the guide head learns alone (``guide_only_loss``): on each tile's own Fourier
    guide without annotations, on the labels' guide target with them. ``heads``, ``decoder``,
    ``none`` need annotations and train with the full training loss (``frgnet_loss``) on the
    training targets. Annotated tiles are augmented as in ``train``; unlabelled ones are not,
    so that the guide head learns the new lab's own stain and scanner. ``input_statistics``:
    first align the input normalisation with the tiles' colours (:func:`align_input_statistics`);
    the training then sees the aligned input.
    """
    if keep != "guide" and not sample.annotated:
        raise InputError(f"--freeze-all-but {keep}: needs annotated inputs; without annotations only the guide head can learn")
    run.targets = parent_targets(model, run.targets)
    run.data_mean = model.checkpoint.data_mean
    run.coarsest_microns_per_pixel = model.checkpoint.coarsest_microns_per_pixel
    if input_statistics:
        run.provenance["input_statistics"] = align_input_statistics(run, model, parent, sample.tiles)
    network = copy.deepcopy(model.network)  # the caller's model stays as it is
    modules = trainable_modules(network, keep)
    dataset = RandomCrops(sample.tiles, run.training.crop_size, run.model_config, run.targets, run.training.seed,
                          augment=sample.annotated)
    run.provenance.update(
        parent_model=parent.name,
        parent_sha256=file_sha256(parent),
        trainable=keep,
        frozen=FROZEN[keep],
        finetune_loss="guide" if keep == "guide" else "full training loss",
        finetune_inputs=sample.sources,
        finetune_tiles=sample.windows,
        finetune_annotations=sample.annotations,
    )
    return optimise(run, network, dataset, [], guide_only_loss if keep == "guide" else frgnet_loss, trainable=modules)
