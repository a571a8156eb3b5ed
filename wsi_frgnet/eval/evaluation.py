"""Scoring a model (or the training-free guide) on a labelled data folder (METHOD_NOTES.md §7)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from wsi_frgnet.eval.metrics import InstanceScores, mean_scores, score_instances
from wsi_frgnet.io.data_folder import list_labelled_images, load_pair

logger = logging.getLogger(__name__)

Segmenter = Callable[[np.ndarray, float | None], np.ndarray]  # RGB (H, W, 3) uint8, its µm/px → label map (H, W)


@dataclass
class EvaluationReport:
    """Per-image scores and their mean over images (the paper's "mean" PQ / AJI)."""

    per_image: dict[str, InstanceScores]

    @property
    def mean(self) -> dict[str, float]:
        return mean_scores(list(self.per_image.values()))

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "images": {name: s.as_dict() for name, s in self.per_image.items()}}


def evaluate_folder(segment: Segmenter, data_dir: Path, quiet: bool = False, microns_per_pixel: float | None = None) -> EvaluationReport:
    """Score ``segment`` on every labelled image of ``data_dir``; each image is given with its
    µm/px: ``microns_per_pixel`` when set, else the folder manifest's value (or None)."""
    items = list_labelled_images(Path(data_dir))
    per_image = {}
    for item in tqdm(items, desc="evaluating", unit="image", disable=quiet):
        rgb, truth = load_pair(item)
        mpp = microns_per_pixel if microns_per_pixel is not None else item.microns_per_pixel
        per_image[item.name] = score_instances(truth, segment(rgb, mpp))
        logger.debug("%s: %s", item.name, per_image[item.name])
    return EvaluationReport(per_image)


def seen_in_training(provenance: dict[str, Any], names: list[str]) -> list[str]:
    """The ``names`` the model was trained on, as its provenance records (fine-tuning tiles
    included by their source file's stem)."""
    trained = set(provenance.get("training_images") or [])
    trained |= {Path(source).stem for source in provenance.get("finetune_inputs") or {}}
    return [name for name in names if name in trained]
