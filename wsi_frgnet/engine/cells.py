"""Cells around nuclei: each nucleus grows by up to a distance, as QuPath's cell expansion does.

A pixel joins the cell of the nearest nucleus pixel when it lies within ``expansion`` px of it
(so the cells of neighbours stop where they meet), and, when ``constrain_scale`` > 1, only when
it also lies inside the nucleus' convex hull scaled by that factor about its centroid (QuPath's
"constrain scale"). The cell polygon is the outline of those pixels joined with its nucleus,
less the other nuclei; frame: the px of the label map given.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import shapely
from scipy import ndimage
from shapely import affinity

from wsi_frgnet.geometry.outlines import trace_outline
from wsi_frgnet.geometry.raster import ring_masks


def cell_regions(nucleus_labels: np.ndarray, expansion: float, hulls: Sequence[shapely.Polygon] | None = None,
                 constrain_scale: float = 0.0) -> np.ndarray:
    """Cell label map (int32, same shape): every pixel within ``expansion`` px of a nucleus
    pixel takes the label of the nearest one (label i + 1 for nucleus i; 0 elsewhere).

    ``hulls`` (convex hulls of the nuclei, in the map's px) and ``constrain_scale`` > 1 keep each
    cell inside its hull scaled about the hull's centroid (the nucleus itself always stays)."""
    if not nucleus_labels.any():
        return np.zeros_like(nucleus_labels, dtype=np.int32)
    distance, (rows, columns) = ndimage.distance_transform_edt(nucleus_labels == 0, return_indices=True)
    cells = nucleus_labels[rows, columns].astype(np.int32)
    cells[distance > expansion] = 0
    if hulls is not None and constrain_scale > 1.0:
        scaled = [np.asarray(affinity.scale(hull, constrain_scale, constrain_scale, origin="centroid").exterior.coords)
                  for hull in hulls]
        height, width = cells.shape
        boxes = ndimage.find_objects(cells, max_label=len(scaled))
        for indices, row0, column0, inside in ring_masks(scaled, (height, width)):
            for index, top, left, mask in zip(indices.tolist(), row0.tolist(), column0.tolist(), inside):
                box = boxes[index]
                if box is None:
                    continue
                label = index + 1
                rows, columns = box
                allowed = np.zeros((rows.stop - rows.start, columns.stop - columns.start), dtype=bool)
                # the scaled hull's mask (window at top, left) where it meets the cell's box
                r0, r1 = max(top, rows.start), min(top + mask.shape[0], rows.stop)
                c0, c1 = max(left, columns.start), min(left + mask.shape[1], columns.stop)
                if r0 < r1 and c0 < c1:
                    allowed[r0 - rows.start : r1 - rows.start, c0 - columns.start : c1 - columns.start] = mask[r0 - top : r1 - top, c0 - left : c1 - left]
                sub = cells[box]
                sub[(sub == label) & ~allowed & (nucleus_labels[box] != label)] = 0
    return cells


def cell_polygon(cells: np.ndarray, label: int, box: tuple[slice, slice] | None, nucleus: shapely.Polygon) -> shapely.Polygon:
    """The cell of nucleus ``label``: its pixels' outline (``box``: their bounding slices, from
    ``ndimage.find_objects(cells)``, or None) joined with ``nucleus``, px of ``cells``; one
    polygon without holes (the largest part, the outer ring)."""
    shape = nucleus
    if box is not None:
        rows, columns = box
        outline = trace_outline(cells[rows, columns] == label) + (columns.start, rows.start)
        traced = shapely.Polygon(outline)
        if not traced.is_valid:
            traced = shapely.make_valid(traced)
        shape = shapely.union(traced, nucleus)
    parts = [part for part in shapely.get_parts(shape) if isinstance(part, shapely.Polygon) and not part.is_empty]
    if not parts:
        return nucleus
    return shapely.Polygon(max(parts, key=lambda part: part.area).exterior)
