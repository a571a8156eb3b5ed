"""Polygons → pixels: the one rasteriser, for label maps and for maxima inside polygons.

Rule: a pixel belongs to a polygon when its centre (c + 0.5, r + 0.5) lies inside by the
even-odd rule (a centre exactly on a vertical edge belongs to the pixel column right of it only
when the edge is strictly left of the centre). Rings are (m, 2) (x, y) px, closed or not, in
the frame of the image they are drawn on; parts outside the image are clipped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from wsi_frgnet.geometry.boxes import bounding_boxes
from wsi_frgnet.geometry.outlines import stacked_by_length

CHUNK = 128  # rings rasterised together; a chunk's arrays are padded to its largest ring


def _windows(rings: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(row0, row1, column0, column1) per ring (k,): its bounding box in whole pixels, clipped."""
    height, width = shape
    boxes = bounding_boxes(rings)
    column0 = np.clip(np.floor(boxes[:, 0]).astype(np.int64), 0, width)
    column1 = np.clip(np.ceil(boxes[:, 2]).astype(np.int64), 0, width)
    row0 = np.clip(np.floor(boxes[:, 1]).astype(np.int64), 0, height)
    row1 = np.clip(np.ceil(boxes[:, 3]).astype(np.int64), 0, height)
    return row0, row1, column0, column1


def _inside(rings: np.ndarray, row0: np.ndarray, row1: np.ndarray, column0: np.ndarray, column1: np.ndarray) -> np.ndarray:
    """(k, R, C) bool: pixel (row0 + i, column0 + j) has its centre inside ring k, with R and C
    the largest window of the chunk (False beyond a ring's own window)."""
    count = len(rings)
    window_height = max(int((row1 - row0).max()), 1)
    window_width = max(int((column1 - column0).max()), 1)
    start, end = rings, np.roll(rings, -1, axis=1)  # edges (k, m, 2), the closing one included
    centres_y = (row0[:, None] + np.arange(window_height) + 0.5)[:, :, None]  # (k, R, 1)
    ya, yb = start[:, None, :, 1], end[:, None, :, 1]
    crosses = (ya <= centres_y) != (yb <= centres_y)  # (k, R, m)
    with np.errstate(divide="ignore", invalid="ignore"):  # horizontal edges: masked by `crosses`
        crossing_x = start[:, None, :, 0] + (centres_y - ya) / (yb - ya) * (end[:, None, :, 0] - start[:, None, :, 0])
    # A centre is inside when an odd number of crossings lie strictly left of it: each crossing
    # toggles every column from the first centre right of it on.
    which, row, _ = np.nonzero(crosses)
    first = np.clip(np.floor(crossing_x[crosses] - 0.5).astype(np.int64) + 1 - column0[which], 0, window_width)
    toggles = np.bincount(
        (which * window_height + row) * (window_width + 1) + first, minlength=count * window_height * (window_width + 1)
    )
    inside = (np.cumsum(toggles.reshape(count, window_height, window_width + 1)[..., :-1], axis=2) % 2).astype(bool)
    inside &= np.arange(window_height)[None, :, None] < (row1 - row0)[:, None, None]
    inside &= np.arange(window_width)[None, None, :] < (column1 - column0)[:, None, None]
    return inside


def ring_masks(
    rings: Sequence[np.ndarray], shape: tuple[int, int], chunk: int = CHUNK
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Pixel masks of rings on an image of ``shape`` = (height, width), vectorised over rings
    of equal length, in chunks of similar size.

    Yields (indices (k,) into ``rings``, row0 (k,), column0 (k,), inside (k, R, C) bool) with
    inside[i, r, c] for pixel (row0[i] + r, column0[i] + c). Rings with fewer than 3 points
    are skipped.
    """
    for indices, stacked in stacked_by_length([ring for ring in rings]):
        if stacked.shape[1] < 3:
            continue
        row0, row1, column0, column1 = _windows(stacked, shape)
        by_size = np.argsort((row1 - row0) * (column1 - column0), kind="stable")
        for begin in range(0, len(indices), chunk):
            members = by_size[begin : begin + chunk]
            inside = _inside(stacked[members], row0[members], row1[members], column0[members], column1[members])
            yield indices[members], row0[members], column0[members], inside


def polygons_to_label_map(polygons: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Label map (int32 (H, W), 0 background, i + 1 for polygons[i]); earlier polygons win
    overlaps. Polygons that cover no pixel centre leave their label unused."""
    labels = np.zeros(shape, dtype=np.int32)
    pieces = {}
    for indices, row0, column0, inside in ring_masks(polygons, shape):
        for index, top, left, mask in zip(indices.tolist(), row0.tolist(), column0.tolist(), inside):
            pieces[index] = (top, left, mask)
    for index in sorted(pieces, reverse=True):  # the earliest painted last: it wins overlaps
        top, left, mask = pieces[index]
        rows, columns = np.nonzero(mask)
        labels[top + rows, left + columns] = index + 1
    return labels


def polygon_maxima(values: np.ndarray, rings: Sequence[np.ndarray], fallback: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """(n,) max of ``values`` (H, W) over the pixels of each ring (the rule of this module).

    A ring that holds no pixel centre (tiny, or outside the image) gets the value at its
    ``fallback`` point (n, 2) (x, y), clamped to the image.
    """
    height, width = values.shape
    if not len(rings):
        return np.empty(0, dtype=np.float64)
    fallback = np.asarray(fallback, dtype=np.float64)
    fallback_columns = np.clip(fallback[:, 0].astype(np.int64), 0, width - 1)
    fallback_rows = np.clip(fallback[:, 1].astype(np.int64), 0, height - 1)
    out = values[fallback_rows, fallback_columns].astype(np.float64)
    for indices, row0, column0, inside in ring_masks(rings, (height, width), chunk):
        window_height, window_width = inside.shape[1:]
        pixel_rows = np.minimum(row0[:, None] + np.arange(window_height), height - 1)
        pixel_columns = np.minimum(column0[:, None] + np.arange(window_width), width - 1)
        window = values[pixel_rows[:, :, None], pixel_columns[:, None, :]].astype(np.float64)
        maxima = np.where(inside, window, -np.inf).max(axis=(1, 2))
        covered = inside.any(axis=(1, 2))
        out[indices[covered]] = maxima[covered]
    return out
