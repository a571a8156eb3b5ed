"""Training targets of one crop: instance label map (+ image) → what every head should predict.

Frames: label maps are (row = y, column = x) arrays; contour coordinates are input px (pixel
centre at index + 0.5). Head cells are stride x stride blocks; cell (i, j) is centred at
((j + 0.5) * stride, (i + 0.5) * stride).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from wsi_frgnet.config import ModelConfig, TargetConfig
from wsi_frgnet.engine.measurements import stain_densities
from wsi_frgnet.engine.tissue import otsu_threshold
from wsi_frgnet.geometry.fourier import elliptic_fourier_descriptors, resample_polygon
from wsi_frgnet.geometry.outlines import trace_outline
from wsi_frgnet.model.guide import fourier_guide, guide_target, high_pass_guide


@dataclass
class CropTargets:
    """Targets of one crop. N = number of taught instances, (h, w) = head grid.

    score: (h, w) 1 where a taught nucleus core lies in the cell, else 0.
    score_weight: (h, w) 0 where the score loss ignores the cell, else 1.
    owner: (h, w) index into the instance arrays of the cell's instance, -1 for none.
    centres: (N, 2) contour centres (x0, y0), px. coefficients: (N, K, 4) (a, b, c, d), px.
    contours: (N, S, 2) outline points at t = i / S, px.
    guide: (H/2, W/2) guide-head target at stride 2, or None when the guide is off.
    """

    score: np.ndarray
    score_weight: np.ndarray
    owner: np.ndarray
    centres: np.ndarray
    coefficients: np.ndarray
    contours: np.ndarray
    guide: np.ndarray | None


def _block_view(array: np.ndarray, stride: int) -> np.ndarray:
    """(H, W) → (H / stride, W / stride, stride * stride) view of each cell's pixels."""
    height, width = array.shape
    blocks = array.reshape(height // stride, stride, width // stride, stride)
    return blocks.transpose(0, 2, 1, 3).reshape(height // stride, width // stride, stride * stride)


def image_guide(rgb: np.ndarray, target_config: TargetConfig) -> np.ndarray:
    """The training-free Fourier guide of an (H, W, 3) uint8 image (float32 in [0, 1]), on the
    plane ``target_config.guide_source`` names: luminance (the paper's) or the haematoxylin
    optical density (QuPath's default H&E vectors)."""
    if target_config.guide_source == "haematoxylin":
        return high_pass_guide(stain_densities(rgb)[0], target_config.guide_radius)
    return fourier_guide(rgb, target_config.guide_radius)


def build_targets(
    rgb: np.ndarray,
    labels: np.ndarray,
    model_config: ModelConfig,
    target_config: TargetConfig,
    full_areas: dict[int, float] | None = None,
    unknown: np.ndarray | None = None,
    partial: bool = False,
) -> CropTargets:
    """Targets for a crop ``rgb`` (H, W, 3) uint8 with instance ``labels`` (H, W).

    ``full_areas`` maps label id → area in the uncropped image, so that instances the crop cut
    to less than ``min_kept_fraction`` are ignored rather than taught. ``unknown`` (H, W) bool
    marks pixels whose annotation is missing: cells there are never taught as background.
    ``partial``: the labels hold only some of the nuclei (METHOD_NOTES.md §4): cells that may hold
    an unlabelled nucleus (:func:`unlabelled_nucleus_cells`, by ``target_config.partial_rule``)
    are ignored by the score loss instead of being taught as background.
    """
    stride = model_config.head_stride
    height, width = labels.shape
    normalised_guide = image_guide(rgb, target_config) if model_config.uses_guide else None
    if height % stride or width % stride:
        raise ValueError(f"crop size {width}x{height} is not a multiple of the head stride {stride}")
    order, samples = model_config.fourier_order, model_config.contour_points
    normalised = np.zeros(labels.shape, dtype=np.float32)
    owner_px = np.full(labels.shape, -1, dtype=np.int64)
    ignored_px = np.zeros(labels.shape, dtype=bool) if unknown is None else unknown.astype(bool).copy()
    centres, coefficients, contours = [], [], []
    for label_id, window in enumerate(ndimage.find_objects(labels), start=1):
        if window is None:
            continue
        local = labels[window] == label_id
        area = int(local.sum())
        full_area = full_areas.get(label_id, area) if full_areas is not None else area
        if area < target_config.min_area or area < target_config.min_kept_fraction * full_area:
            ignored_px[window] |= local
            continue
        distance = ndimage.distance_transform_edt(np.pad(local, 1))[1:-1, 1:-1]
        index = len(centres)
        normalised[window][local] = (distance / distance.max())[local]
        owner_px[window][local] = index
        outline = trace_outline(local) + np.array([window[1].start, window[0].start], dtype=np.float64)
        centre, coefficient = elliptic_fourier_descriptors(outline, order)
        centres.append(centre)
        coefficients.append(coefficient)
        contours.append(resample_polygon(outline, samples))

    cell_values = _block_view(normalised, stride)
    best = cell_values.argmax(axis=2)
    cell_max = np.take_along_axis(cell_values, best[..., None], axis=2)[..., 0]
    owner = np.take_along_axis(_block_view(owner_px, stride), best[..., None], axis=2)[..., 0]
    score = (cell_max >= target_config.core_threshold).astype(np.float32)
    ring = (cell_max >= target_config.ignore_threshold) & (score == 0)
    cell_ignored = _block_view(ignored_px, stride).any(axis=2)
    if partial:
        cell_ignored |= unlabelled_nucleus_cells(rgb, labels, stride, target_config, normalised_guide)
    cell_ignored &= score == 0
    score_weight = (~(ring | cell_ignored)).astype(np.float32)
    owner = np.where(score == 1, owner, -1)

    guide = None
    if model_config.uses_guide:
        soft = guide_target(normalised_guide, labels > 0, hard=False)
        guide = _block_view(soft, 2).mean(axis=2)
        if model_config.guide == "hard":  # binarised at the guide head's own resolution
            guide = guide >= target_config.hard_guide_threshold
        guide = guide.astype(np.float32)

    return CropTargets(
        score=score,
        score_weight=score_weight,
        owner=owner,
        centres=np.asarray(centres, dtype=np.float32).reshape(-1, 2),
        coefficients=np.asarray(coefficients, dtype=np.float32).reshape(-1, order, 4),
        contours=np.asarray(contours, dtype=np.float32).reshape(-1, samples, 2),
        guide=guide,
    )


def unlabelled_nucleus_cells(
    rgb: np.ndarray, labels: np.ndarray, stride: int, target_config: TargetConfig, guide: np.ndarray | None = None
) -> np.ndarray:
    """(H / stride, W / stride) bool: head cells that may hold a nucleus nobody labelled, which
    partial labels must not teach as background (METHOD_NOTES.md §4).

    ``guide`` (the paper's, the default): at least half the cell's pixels are unlabelled with a
    normalised Fourier guide >= the hard-guide threshold. ``haematoxylin``: the crop's
    haematoxylin optical density (QuPath's default H&E vectors), 5 x 5 px mean, reaches Otsu's
    threshold of that map on some unlabelled pixel of the cell. On the 30 MoNuSeg images at 30 %
    of the labels, 256 px crops, they teach 71 % and 7 % of the unlabelled nuclei's score cells
    as background and ignore 9 % and 14 % of the cells without any nucleus; yet the guide rule
    gave the better validation PQ (docs/RESULTS.md). ``guide``: the crop's :func:`image_guide`
    when the caller has it already (computed here otherwise).
    """
    unlabelled = labels == 0
    if target_config.partial_rule == "guide":
        guide = image_guide(rgb, target_config) if guide is None else guide
        positive = guide >= target_config.hard_guide_threshold
        return _block_view(positive & unlabelled, stride).mean(axis=2) >= 0.5
    density = ndimage.uniform_filter(stain_densities(rgb)[0], 5)
    return _block_view((density >= otsu_threshold(density)) & unlabelled, stride).any(axis=2)
