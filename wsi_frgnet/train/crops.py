"""Training samples: random augmented crops of labelled images with their targets, and batching."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from wsi_frgnet.config import ModelConfig, TargetConfig
from wsi_frgnet.model.losses import BatchTargets
from wsi_frgnet.train.augment import dihedral, fibre_artefacts, scanner_jitter, stain_jitter
from wsi_frgnet.train.targets import CropTargets, build_targets


@dataclass
class LabelledArray:
    """One training image in memory: RGB (H, W, 3) uint8 and instance labels (H, W) int32.

    ``unknown``: optional (H, W) mask, True where nuclei were not annotated; training never
    teaches those pixels as background (``build_targets(..., unknown=...)``).
    ``partial``: the labels hold only some of the image's nuclei, wherever they lie (METHOD_NOTES.md
    §4, ``build_targets(..., partial=True)``).
    """

    name: str
    rgb: np.ndarray
    labels: np.ndarray
    unknown: np.ndarray | None = None
    partial: bool = False

    def __post_init__(self) -> None:
        if self.unknown is not None:
            self.unknown = np.asarray(self.unknown, dtype=bool)
            if self.unknown.shape != self.labels.shape:
                raise ValueError(f"{self.name}: unknown mask of shape {self.unknown.shape}, labels {self.labels.shape}")
        areas = np.bincount(self.labels.ravel())
        self.areas = {int(i): int(a) for i, a in enumerate(areas) if i > 0 and a > 0}


class RandomCrops(Dataset):
    """Square crops drawn at random from the images, augmented, with their targets.

    One epoch draws about as many crop pixels as the images hold: ceil(H * W / crop²) crops
    per image. Sample ``i`` of epoch ``e`` is a pure function of (seed, e, i), so a run is
    reproducible whatever the number of loader workers. Images smaller than the crop are
    padded with white background and no labels. An image's ``unknown`` mask is cropped,
    flipped and rotated with it and passed to ``build_targets``; it combines with
    ``keep_fraction``. Images marked ``partial``, and all of them when ``keep_fraction`` < 1,
    get the partial-annotation rule. ``scale_jitter`` s > 0 (with ``augment``): each crop shows
    a window of crop / f image px resampled to the crop (image bilinear, labels and unknown mask
    nearest), f uniform in [1 - s, 1 + s], so nuclei appear f times their size: a model for a
    range of µm/px around the images' own. ``fibres`` (with ``augment``): half the crops get
    synthetic dark fibres over their background (``augment.fibre_artefacts``).
    """

    def __init__(
        self,
        images: list[LabelledArray],
        crop_size: int,
        model_config: ModelConfig,
        target_config: TargetConfig,
        seed: int,
        augment: bool = True,
        keep_fraction: float = 1.0,
        scanner: bool = False,
        scale_jitter: float = 0.0,
        fibres: bool = False,
    ) -> None:
        if crop_size % model_config.size_multiple:
            raise ValueError(f"crop size must be a multiple of {model_config.size_multiple}")
        self.images = images
        self.crop_size = crop_size
        self.model_config = model_config
        self.target_config = target_config
        self.seed = seed
        self.augment = augment
        self.scanner = scanner  # also augment with scanner_jitter (resolution loss, blur, JPEG, brightness)
        self.scale_jitter = scale_jitter
        self.fibres = fibres  # draw fibre_artefacts over half the crops
        self.keep_fraction = keep_fraction
        self.kept_ids = [kept_instances(image.labels, keep_fraction, seed, index) for index, image in enumerate(images)]
        self.epoch = 0
        self.image_of_sample = [
            index
            for index, image in enumerate(images)
            for _ in range(max(1, math.ceil(image.labels.size / crop_size**2)))
        ]

    def __len__(self) -> int:
        return len(self.image_of_sample)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _crop(
        self, image: LabelledArray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, float]:
        """(rgb, labels, unknown or None, zoom) of one random crop (padding: white, no labels,
        known); ``zoom``: the factor the crop was resampled by (1 without scale jitter)."""
        zoom = rng.uniform(1 - self.scale_jitter, 1 + self.scale_jitter) if self.augment and self.scale_jitter else 1.0
        size = self.crop_size if zoom == 1.0 else max(1, round(self.crop_size / zoom))
        height, width = image.labels.shape
        pad_y, pad_x = max(0, size - height), max(0, size - width)
        rgb, labels, unknown = image.rgb, image.labels, image.unknown
        if pad_y or pad_x:
            rgb = np.pad(rgb, ((0, pad_y), (0, pad_x), (0, 0)), constant_values=255)
            labels = np.pad(labels, ((0, pad_y), (0, pad_x)))
            if unknown is not None:
                unknown = np.pad(unknown, ((0, pad_y), (0, pad_x)))
        y = int(rng.integers(labels.shape[0] - size + 1))
        x = int(rng.integers(labels.shape[1] - size + 1))
        window = (slice(y, y + size), slice(x, x + size))
        rgb, labels, unknown = rgb[window], labels[window], None if unknown is None else unknown[window]
        if size != self.crop_size:
            rgb, labels, unknown = resize_crop(rgb, labels, unknown, self.crop_size)
        return rgb, labels, unknown, self.crop_size / size

    def __getitem__(self, index: int) -> tuple[np.ndarray, CropTargets]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image = self.images[self.image_of_sample[index]]
        rgb, labels, unknown, zoom = self._crop(image, rng)
        full_areas = image.areas if zoom == 1.0 else {i: area * zoom**2 for i, area in image.areas.items()}
        if self.augment and self.fibres:
            fibre_rng = np.random.default_rng([self.seed, self.epoch, index, 2])  # the other draws stay as without fibres
            if fibre_rng.random() < 0.5:
                rgb = fibre_artefacts(rgb, labels, fibre_rng)  # every nucleus still labelled: fibres keep off them all
        if self.keep_fraction < 1.0:
            labels = np.where(np.isin(labels, self.kept_ids[self.image_of_sample[index]]), labels, 0)
        partial = self.keep_fraction < 1.0 or image.partial
        if self.augment:
            rgb, labels, unknown = dihedral(rgb, labels, rng, unknown)
            rgb = stain_jitter(rgb, rng)
            if self.scanner:
                rgb = scanner_jitter(rgb, rng)
        targets = build_targets(
            rgb, labels, self.model_config, self.target_config, full_areas=full_areas, unknown=unknown, partial=partial
        )
        return np.ascontiguousarray(rgb), targets


def resize_crop(
    rgb: np.ndarray, labels: np.ndarray, unknown: np.ndarray | None, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A square crop resampled to ``size`` x ``size`` px: RGB bilinear, labels and the unknown
    mask nearest (pixel centres map to pixel centres)."""
    image = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((size, size), Image.Resampling.BILINEAR))
    source = labels.shape[0]
    nearest = np.minimum(((np.arange(size) + 0.5) * source / size).astype(np.intp), source - 1)
    grid = np.ix_(nearest, nearest)
    return image, labels[grid], None if unknown is None else unknown[grid]


def kept_instances(labels: np.ndarray, fraction: float, seed: int, image_index: int) -> np.ndarray:
    """Ids of the instances kept as annotations: round(fraction * N) of the N instances,
    chosen at random with (seed, image_index)."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    count = round(fraction * len(ids))
    return np.sort(np.random.default_rng([seed, image_index, 1]).permutation(ids)[:count])


def collate(samples: list[tuple[np.ndarray, CropTargets]]) -> tuple[np.ndarray, BatchTargets]:
    """Stack crops; concatenate instances, shifting each crop's ``owner`` indices."""
    images = np.stack([rgb for rgb, _ in samples])
    owners, offset = [], 0
    for _, targets in samples:
        owners.append(np.where(targets.owner >= 0, targets.owner + offset, -1))
        offset += len(targets.centres)
    guides = [t.guide for _, t in samples]
    batch = BatchTargets(
        score=torch.from_numpy(np.stack([t.score for _, t in samples])),
        score_weight=torch.from_numpy(np.stack([t.score_weight for _, t in samples])),
        owner=torch.from_numpy(np.stack(owners)),
        centres=torch.from_numpy(np.concatenate([t.centres for _, t in samples])),
        coefficients=torch.from_numpy(np.concatenate([t.coefficients for _, t in samples])),
        contours=torch.from_numpy(np.concatenate([t.contours for _, t in samples])),
        guide=None if guides[0] is None else torch.from_numpy(np.stack(guides)),
    )
    return images, batch

