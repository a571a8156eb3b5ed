"""Final nuclei → measured nuclei, or cells: the last stage before export, streamed.

Frame: working px (see :mod:`wsi_frgnet.engine.planning`). Nuclei arrive final (merged, without
overlaps) from the deduplicator together with its *frontier*: no nucleus still to come reaches
above it. A cell depends on the nuclei within twice the expansion of its nucleus, so a nucleus
waits until the frontier is that far below it; without cells it goes on at once. Ready nuclei
are processed in chunks of about ``CHUNK`` px: the chunk's pixels are read once (at the model's
resolution), every nearby nucleus is drawn into a label map, cells are grown on it
(:mod:`~wsi_frgnet.engine.cells`) and every object is measured
(:mod:`~wsi_frgnet.engine.measurements`). Cells already made win the pixels a later chunk would
also claim, so cells of different chunks never overlap. Memory: the nuclei of a band a few
expansions high, beside those the deduplicator holds back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import shapely
from scipy import ndimage

from wsi_frgnet.engine.cells import cell_polygon, cell_regions
from wsi_frgnet.engine.measurements import (
    intensity_measurements,
    shape_measurements,
    stain_densities,
)
from wsi_frgnet.engine.overlaps import polygon_of
from wsi_frgnet.geometry.raster import polygons_to_label_map
from wsi_frgnet.nucleus import Nucleus

CHUNK = 1024  # working px: side of the squares ready nuclei are grouped by
BATCH = 512  # nuclei without cells wait until this many are ready
Reader = Callable[[tuple[int, int, int, int]], np.ndarray]  # (x, y, width, height) working px → RGB


@dataclass(frozen=True)
class ObjectSettings:
    """What the last stage makes. ``expansion``: cell expansion, working px (0: nuclei only);
    ``constrain_scale``: cells stay inside the nucleus' hull scaled by this (≤ 1: no limit);
    ``microns_per_pixel``: of working px, for measurements in µm (None: px); ``measure``:
    whether to measure at all."""

    expansion: float = 0.0
    constrain_scale: float = 0.0
    microns_per_pixel: float | None = None
    measure: bool = True  # False: no measurements (and no pixels read)


@dataclass
class _Entry:
    nucleus: Nucleus
    polygon: shapely.Polygon
    bounds: tuple[float, float, float, float]
    cell: shapely.Polygon | None = None


class ObjectMaker:
    """Streams final nuclei (working px) into measured nuclei or cells (working px): feed
    :meth:`add` in stream order with the deduplicator's frontier, then :meth:`flush`."""

    def __init__(self, read: Reader, settings: ObjectSettings) -> None:
        self.read = read
        self.settings = settings
        self._pending: list[_Entry] = []
        self._done: list[_Entry] = []  # made, kept as neighbours of the cells still to make

    def add(self, nuclei: Sequence[Nucleus], frontier: float) -> list[Nucleus]:
        """Take final nuclei; return the objects that became ready (in a deterministic order)."""
        if not self.settings.measure and self.settings.expansion <= 0:
            return list(nuclei)  # nothing to make
        for nucleus in nuclei:
            polygon = polygon_of(nucleus)
            self._pending.append(_Entry(nucleus, polygon, tuple(polygon.bounds)))
        reach = 2.0 * self.settings.expansion
        if reach == 0 and len(self._pending) < BATCH:
            return []  # nuclei alone are measured in batches: fewer, larger reads
        ready = [entry for entry in self._pending if entry.bounds[3] + reach < frontier or reach == 0]
        out = self._make(ready)
        # A made nucleus stays a neighbour while one still to make (waiting, or to come below the
        # frontier) could lie within two expansions of it.
        lowest = min([frontier, *(entry.bounds[1] for entry in self._pending)])
        self._done = [entry for entry in self._done if entry.bounds[3] + reach >= lowest] if reach else []
        return out

    def flush(self) -> list[Nucleus]:
        """Every object still waiting (the stream has ended)."""
        out = self._make(list(self._pending))
        self._done.clear()
        return out

    # -- internals ---------------------------------------------------------------------------

    def _make(self, ready: list[_Entry]) -> list[Nucleus]:
        if not ready:
            return []
        chosen = {id(entry) for entry in ready}
        self._pending = [entry for entry in self._pending if id(entry) not in chosen]
        groups: dict[tuple[int, int], list[_Entry]] = {}
        for entry in ready:
            x0, y0, x1, y1 = entry.bounds
            groups.setdefault((math.floor((y0 + y1) / 2 / CHUNK), math.floor((x0 + x1) / 2 / CHUNK)), []).append(entry)
        out = []
        waiting = list(ready)  # nuclei of the chunks still to make compete for pixels too
        for key in sorted(groups):
            members = groups[key]
            made = {id(entry) for entry in members}
            waiting = [entry for entry in waiting if id(entry) not in made]
            out.extend(self._make_chunk(members, waiting))
        return out

    def _make_chunk(self, members: list[_Entry], waiting: list[_Entry]) -> list[Nucleus]:
        expansion = self.settings.expansion
        margin = math.ceil(expansion) + 2
        bounds = np.array([entry.bounds for entry in members])
        x0, y0 = math.floor(bounds[:, 0].min()) - margin, math.floor(bounds[:, 1].min()) - margin
        x1, y1 = math.ceil(bounds[:, 2].max()) + margin, math.ceil(bounds[:, 3].max()) + margin
        # The partition's window reaches one expansion further, so that competing nuclei count.
        extra = math.ceil(expansion)
        px0, py0, px1, py1 = x0 - extra, y0 - extra, x1 + extra, y1 + extra
        neighbours = [entry for entry in [*waiting, *self._pending, *self._done] if _meets(entry.bounds, (px0, py0, px1, py1))]
        context = members + neighbours
        shape = (py1 - py0, px1 - px0)
        rings = [np.asarray(entry.polygon.exterior.coords) - (px0, py0) for entry in context]
        nucleus_labels = polygons_to_label_map(rings, shape)
        inner = (slice(y0 - py0, y1 - py0), slice(x0 - px0, x1 - px0))
        measure = self.settings.measure
        densities = stain_densities(self.read((x0, y0, x1 - x0, y1 - y0))) if measure else None
        count = len(context)
        polygons = np.array([entry.polygon for entry in members], dtype=object)
        mpp = self.settings.microns_per_pixel
        if expansion <= 0:
            values = {**shape_measurements(polygons, mpp), **intensity_measurements(densities, nucleus_labels[inner], count)}
            return [self._finish(entry, index, values, None) for index, entry in enumerate(members)]
        hulls = [shapely.affinity.translate(shapely.convex_hull(entry.polygon), -px0, -py0) for entry in context]
        cells = cell_regions(nucleus_labels, expansion, hulls, self.settings.constrain_scale)
        tree = shapely.STRtree([entry.polygon for entry in context])
        made = [entry.cell for entry in self._done if entry.cell is not None]
        made_tree = shapely.STRtree(made) if made else None
        cell_shapes = []
        boxes = ndimage.find_objects(cells, max_label=len(members))
        for index, entry in enumerate(members):
            local = shapely.affinity.translate(entry.polygon, -px0, -py0)
            outline = shapely.affinity.translate(cell_polygon(cells, index + 1, boxes[index], local), px0, py0)
            blockers = [context[i].polygon for i in tree.query(outline, predicate="intersects") if i != index]
            if made_tree is not None:
                blockers += [made[i] for i in made_tree.query(outline, predicate="intersects")]
            if blockers:
                outline = _without(outline, shapely.union_all(blockers), entry.polygon)
            entry.cell = outline
            cell_shapes.append(outline)
        if not measure:
            return [self._finish(entry, index, {}, cell_shapes[index]) for index, entry in enumerate(members)]
        cell_labels = cells[inner].copy()
        cytoplasm = np.where(nucleus_labels[inner] == 0, cell_labels, 0)
        values = {
            **shape_measurements(polygons, mpp, "Nucleus: "),
            **shape_measurements(np.array(cell_shapes, dtype=object), mpp, "Cell: "),
        }
        values["Nucleus/Cell area ratio"] = np.clip(shapely.area(polygons) / shapely.area(np.array(cell_shapes, dtype=object)), 0, 1)
        values.update(intensity_measurements(densities, nucleus_labels[inner], count, "Nucleus: "))
        values.update(intensity_measurements(densities, cytoplasm, count, "Cytoplasm: "))
        values.update(intensity_measurements(densities, cell_labels, count, "Cell: "))
        return [self._finish(entry, index, values, cell_shapes[index]) for index, entry in enumerate(members)]

    def _finish(self, entry: _Entry, index: int, values: dict[str, np.ndarray], cell: shapely.Polygon | None) -> Nucleus:
        self._done.append(entry)
        measurements = {name: float(column[index]) for name, column in values.items()}
        ring = None if cell is None else np.asarray(cell.exterior.coords, dtype=np.float64)
        return replace(entry.nucleus, cell=ring, measurements=measurements)


def _meets(bounds: tuple[float, float, float, float], window: tuple[float, float, float, float]) -> bool:
    return bounds[0] < window[2] and window[0] < bounds[2] and bounds[1] < window[3] and window[1] < bounds[3]


def _without(cell: shapely.Polygon, blockers: shapely.Geometry, nucleus: shapely.Polygon) -> shapely.Polygon:
    """``cell`` less ``blockers``, as one polygon without holes that keeps its nucleus."""
    rest = shapely.difference(cell, blockers)
    parts = [part for part in shapely.get_parts(rest) if isinstance(part, shapely.Polygon) and not part.is_empty]
    if not parts:
        return nucleus
    touching = [part for part in parts if part.intersects(nucleus)] or parts
    kept = shapely.Polygon(max(touching, key=lambda part: part.area).exterior)
    # Slivers of float noise where a neighbour's cell met this nucleus go back to it: a cell
    # holds its nucleus whole (what it may then share with the neighbour is ~1e-3 px²).
    joined = shapely.union(kept, nucleus)
    pieces = [part for part in shapely.get_parts(joined) if isinstance(part, shapely.Polygon)]
    return shapely.Polygon(max(pieces, key=lambda part: part.area).exterior)
