"""Network outputs of one image → nucleus polygons (METHOD.md §5).

A pure function of the outputs and a ``PostprocessConfig``. Coordinates are input px of the
network tile (x right, y down, pixel centre at index + 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
import torch

from wsi_frgnet.config import ModelConfig, PostprocessConfig
from wsi_frgnet.contours import rasterize_polygon
from wsi_frgnet.model.contour_ops import decode_contours, refine_contours
from wsi_frgnet.model.frgnet import NetworkOutput


@dataclass(frozen=True)
class Nucleus:
    """One detected nucleus.

    polygon: (n, 2) float64 (x, y) closed ring (last point == first), valid, px.
    score: detection probability in [0, 1]. guide: max of the predicted guide inside the
    polygon, in [0, 1], or NaN when the model has no guide.
    """

    polygon: np.ndarray
    score: float
    guide: float

    @property
    def centroid(self) -> tuple[float, float]:
        point = shapely.Polygon(self.polygon).centroid
        return float(point.x), float(point.y)


def box_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; boxes (N, 4) = (x0, y0, x1, y1). Returns kept indices,
    highest score first; a box is dropped when its IoU with a kept box exceeds ``threshold``."""
    order = np.argsort(-scores, kind="stable")
    boxes = boxes[order]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep = []
    for i in range(len(boxes)):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = slice(i + 1, None)
        width = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        height = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        intersection = width * height
        iou = intersection / np.maximum(areas[i] + areas[rest] - intersection, 1e-9)
        suppressed[rest] |= iou > threshold
    return order[np.asarray(keep, dtype=np.int64)]


def _valid_ring(contour: np.ndarray, min_area: float) -> np.ndarray | None:
    """Closed exterior ring of a valid polygon from contour points, or None if degenerate."""
    polygon = shapely.Polygon(contour)
    if not polygon.is_valid:
        repaired = shapely.make_valid(polygon)
        parts = [g for g in getattr(repaired, "geoms", [repaired]) if isinstance(g, shapely.Polygon)]
        if not parts:
            return None
        polygon = shapely.Polygon(max(parts, key=lambda g: g.area).exterior)
    if polygon.is_empty or polygon.area < min_area:
        return None
    return np.asarray(polygon.exterior.coords, dtype=np.float64)


@torch.no_grad()
def decode_nuclei(
    output: NetworkOutput,
    index: int,
    model_config: ModelConfig,
    config: PostprocessConfig,
    valid_size: tuple[int, int] | None = None,
) -> tuple[list[Nucleus], np.ndarray | None]:
    """Nuclei of image ``index`` of a batch, highest score first, and its guide map.

    ``valid_size`` = (height, width) px of the real image inside a padded input: proposals
    centred outside it are dropped. The guide map is the predicted guide at its own stride 2
    ((height + 1) // 2, (width + 1) // 2) float32 in [0, 1] (cell (i, j) centred at input px
    (2j + 1, 2i + 1)), or None when the model has no guide.
    """
    input_height = output.refinement.shape[-2] * 2
    input_width = output.refinement.shape[-1] * 2
    height, width = valid_size or (input_height, input_width)
    guide_map = None
    if output.guide_logits is not None:
        guide = torch.sigmoid(output.guide_logits[index, 0].float())
        guide_map = guide[: (height + 1) // 2, : (width + 1) // 2].cpu().numpy()

    stride = model_config.head_stride
    probabilities = torch.sigmoid(output.score_logits[index, 0].float())
    rows, cols = torch.nonzero(probabilities > config.score_threshold, as_tuple=True)
    inside = ((rows.float() + 0.5) * stride < height) & ((cols.float() + 0.5) * stride < width)
    rows, cols = rows[inside], cols[inside]
    if rows.numel() == 0:
        return [], guide_map
    scores = probabilities[rows, cols]
    cell_centres = torch.stack([(cols.float() + 0.5) * stride, (rows.float() + 0.5) * stride], dim=1)
    centres = cell_centres + output.location[index, :, rows, cols].T.float()
    coefficients = output.fourier[index, :, :, rows, cols].permute(2, 0, 1).float()
    contours = decode_contours(centres, coefficients, model_config.contour_points)
    if model_config.refinement_iterations > 0:
        contours = refine_contours(
            contours,
            torch.zeros(len(contours), dtype=torch.long, device=contours.device),
            output.refinement[index : index + 1].float(),
            model_config.refinement_iterations,
            (input_height, input_width),
        )[-1]
    contours_np = contours.cpu().numpy().astype(np.float64)
    scores_np = scores.cpu().numpy().astype(np.float64)
    centres_np = centres.cpu().numpy()
    kept = box_nms(np.concatenate([contours_np.min(axis=1), contours_np.max(axis=1)], axis=1), scores_np, config.nms_threshold)
    candidates = contours_np[kept]
    shapes = shapely.polygons(candidates)
    valid = shapely.is_valid(shapes) & (shapely.area(shapes) >= config.min_area)
    nuclei = []
    for position, i in enumerate(kept):
        if valid[position]:
            ring = np.vstack([candidates[position], candidates[position][:1]])
        else:
            ring = _valid_ring(candidates[position], config.min_area)
            if ring is None:
                continue
        guide_value = float("nan")
        if guide_map is not None:
            guide_value = _max_inside(guide_map, ring / 2.0, centres_np[i] / 2.0)
            if config.guide_threshold > 0 and guide_value < config.guide_threshold:
                continue
        nuclei.append(Nucleus(polygon=ring, score=float(scores_np[i]), guide=guide_value))
    return nuclei, guide_map


def _max_inside(values: np.ndarray, ring: np.ndarray, centre: np.ndarray) -> float:
    """Max of ``values`` over cells whose centre is inside ``ring`` (both in the frame of
    ``values``); the value at ``centre`` when no cell centre is inside (tiny polygons)."""
    window = rasterize_polygon(ring, values.shape)
    if window is not None:
        rows, cols, inside = window
        return float(values[rows, cols][inside].max())
    row = int(np.clip(centre[1], 0, values.shape[0] - 1))
    col = int(np.clip(centre[0], 0, values.shape[1] - 1))
    return float(values[row, col])
