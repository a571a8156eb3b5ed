"""Axis-aligned boxes of contours and greedy non-maximum suppression on them.

Boxes are (x0, y0, x1, y1) in px of the contours' frame.

Candidate pairs for NMS come from a uniform grid rather than ``shapely.STRtree``: on 1000
proposals of one 512 px tile (clusters of five, as the score map gives them) the grid takes
0.5 ms against 1.7 ms to build and query the tree (3000: 2.6 vs 11 ms), IoU included.
"""

from __future__ import annotations

import numpy as np


def bounding_boxes(contours: np.ndarray) -> np.ndarray:
    """(N, 4) boxes (x0, y0, x1, y1) of contours (N, S, 2)."""
    by_axis = np.ascontiguousarray(contours.transpose(0, 2, 1))  # reducing a contiguous axis is ~10x faster
    return np.concatenate([by_axis.min(axis=2), by_axis.max(axis=2)], axis=1)


def box_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; boxes (N, 4) = (x0, y0, x1, y1). Returns kept indices,
    highest score first; a box is dropped when its IoU with a kept box exceeds ``threshold``.

    Only boxes that may intersect are compared (found on a grid), so the cost grows with the
    number of boxes, not its square, for boxes scattered over an image. Boxes must be finite.
    """
    order = np.argsort(-scores, kind="stable")
    boxes = np.asarray(boxes, dtype=np.float64)[order]
    first, second = _intersecting_pairs(boxes)  # first < second: first scores higher
    left, top = np.maximum(boxes[first, 0], boxes[second, 0]), np.maximum(boxes[first, 1], boxes[second, 1])
    right, bottom = np.minimum(boxes[first, 2], boxes[second, 2]), np.minimum(boxes[first, 3], boxes[second, 3])
    intersection = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    iou = intersection / np.maximum(areas[first] + areas[second] - intersection, 1e-9)
    first, second = first[iou > threshold], second[iou > threshold]
    by_first = np.argsort(first, kind="stable")
    first, second = first[by_first], second[by_first]
    starts = np.searchsorted(first, np.arange(len(boxes) + 1)).tolist()
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep = []
    for i in range(len(boxes)):
        if suppressed[i]:
            continue
        keep.append(i)
        if starts[i + 1] > starts[i]:
            suppressed[second[starts[i] : starts[i + 1]]] = True
    return order[np.asarray(keep, dtype=np.int64)]


def _intersecting_pairs(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j), i < j, of finite boxes (N, 4) that may intersect, each once.

    Boxes up to four times the median side are binned by top-left corner on a grid as fine as the
    largest of them and paired with the boxes of their own and neighbouring cells; the few
    larger ones are paired with every box."""
    count = len(boxes)
    if count < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    sides = np.max(boxes[:, 2:] - boxes[:, :2], axis=1)
    usual = sides <= 4.0 * float(np.median(sides))
    cell = max(float(sides[usual].max()), 1.0)
    small = np.flatnonzero(sides <= cell)
    firsts, seconds = [], []
    for large in np.flatnonzero(sides > cell):
        others = np.delete(np.arange(count), large)
        firsts.append(np.minimum(large, others))
        seconds.append(np.maximum(large, others))
    corners = boxes[small, :2]
    columns = np.floor((corners[:, 0] - corners[:, 0].min()) / cell).astype(np.int64)
    rows = np.floor((corners[:, 1] - corners[:, 1].min()) / cell).astype(np.int64)
    stride = int(columns.max()) + 2  # a spare column: looking left of column 0 finds nothing
    keys = rows * stride + columns
    by_key = np.argsort(keys, kind="stable")
    sorted_keys = keys[by_key]
    for offset in (-stride - 1, -stride, -stride + 1, -1, 0):  # each pair of neighbouring cells once
        target = keys + offset
        low = np.searchsorted(sorted_keys, target, side="left")
        counts = np.searchsorted(sorted_keys, target, side="right") - low
        total = int(counts.sum())
        if not total:
            continue
        owner = np.repeat(np.arange(len(small)), counts)
        other = by_key[np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(low, counts)]
        if offset == 0:  # the same cell: each pair is found from both sides
            owner, other = owner[owner < other], other[owner < other]
        firsts.append(np.minimum(small[owner], small[other]))
        seconds.append(np.maximum(small[owner], small[other]))
    if not firsts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(firsts), np.concatenate(seconds)
