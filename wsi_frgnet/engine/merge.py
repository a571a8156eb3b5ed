"""Tile results → unique nuclei: placement, ownership by core, de-duplication across borders.

Frame: working px (see :mod:`wsi_frgnet.engine.tiling`); :func:`scale` turns the final nuclei into
level-0 px (``factor`` = level-0 px per working px).

Contract with the slide pipeline, for the tiles of one plan, **in raster order** (the order of
:func:`~wsi_frgnet.engine.tiling.plan_tiles`; filtering tiles out is fine, reordering is not)::

    deduplicator = BorderDeduplicator()
    for tile in tiles:
        nuclei = decode(...)                              # tile-local px of tile.read
        nuclei = translate(nuclei, tile.read[0], tile.read[1])   # → working px
        owned = keep_owned(nuclei, tile)                  # centroid in the core (± tolerance)
        emit(scale(deduplicator.add(tile, owned), factor))       # final nuclei, level-0 px
    emit(scale(deduplicator.flush(), factor))

Call ``add`` for every tile, even with no nuclei: it is what lets held nuclei go. Every nucleus
is emitted exactly once, at most about one tile row (plus ``margin``) after it was added.

Ownership by centroid gives each nucleus to one tile, but two neighbouring tiles see a border
nucleus with slightly different outlines: its centroids may fall on both sides of a core border
(both tiles keep it) or on neither (both drop it). :func:`keep_owned` therefore keeps centroids
up to ``OWNERSHIP_TOLERANCE`` px outside the core, so nothing is lost, and
:class:`BorderDeduplicator` removes the resulting pairs as they stream by, keeping the higher
score, while holding only nuclei that a future tile could still duplicate. Held nuclei are
found on a dictionary grid, which takes insertions and removals as they stream by (a
``shapely.STRtree`` is built once and cannot).
Nuclei larger than the tile context can be cut at tile edges and escape de-duplication:
the slide pipeline warns about them, naming ``--context``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np
import shapely

from wsi_frgnet.engine.overlaps import polygon_of, trimmed, with_polygon
from wsi_frgnet.engine.tiling import Tile
from wsi_frgnet.geometry.boxes import bounding_boxes
from wsi_frgnet.geometry.outlines import centroids, stacked_by_length
from wsi_frgnet.nucleus import Nucleus

OWNERSHIP_TOLERANCE = 2.0  # working px; how far two tiles' centroids of one nucleus may differ


def translate(nuclei: Iterable[Nucleus], dx: float, dy: float) -> list[Nucleus]:
    """New nuclei with every polygon (and cell) moved by (dx, dy) px (e.g. tile-local → working px:
    ``dx, dy = tile.read[:2]``)."""
    shift = np.array([dx, dy], dtype=np.float64)
    return [replace(nucleus, polygon=nucleus.polygon + shift, cell=None if nucleus.cell is None else nucleus.cell + shift)
            for nucleus in nuclei]


def scale(nuclei: Iterable[Nucleus], factor: float) -> list[Nucleus]:
    """New nuclei with every polygon (and cell) scaled by ``factor`` about the origin (working px →
    level-0 px: ``factor`` = level-0 px per working px)."""
    factor = float(factor)
    return [replace(nucleus, polygon=nucleus.polygon * factor, cell=None if nucleus.cell is None else nucleus.cell * factor)
            for nucleus in nuclei]


def keep_owned(nuclei: Iterable[Nucleus], tile: Tile, tolerance: float = OWNERSHIP_TOLERANCE) -> list[Nucleus]:
    """The nuclei (working px) whose polygon centroid lies in the tile's core grown by
    ``tolerance`` px on every side (half-open, as :func:`~wsi_frgnet.engine.tiling.owns`).

    With ``tolerance=0`` each point has exactly one owner. But two tiles see a border nucleus
    slightly differently, and its centroids could fall on *neither* side of the border (a lost
    nucleus) as easily as on both (a duplicate). The default tolerance turns the first case into
    the second, which :class:`BorderDeduplicator` resolves: use them together, with the same
    tolerance.
    """
    nuclei = list(nuclei)
    if not nuclei:
        return []
    x, y, width, height = tile.core
    centres = centroids([nucleus.polygon for nucleus in nuclei])
    inside = (
        (centres[:, 0] >= x - tolerance)
        & (centres[:, 0] < x + width + tolerance)
        & (centres[:, 1] >= y - tolerance)
        & (centres[:, 1] < y + height + tolerance)
    )
    return [nucleus for nucleus, keep in zip(nuclei, inside) if keep]


class _Candidate:
    """A nucleus with its bounding box; its shapely polygon is built only when compared."""

    __slots__ = ("nucleus", "bounds", "tile", "cells", "_shape", "_area", "_detected_area")

    def __init__(self, nucleus: Nucleus, tile: int, bounds: tuple[float, float, float, float]) -> None:
        self.nucleus = nucleus
        self.bounds = bounds
        self.tile = tile
        self.cells: list[tuple[int, int]] = []
        self._shape: shapely.Polygon | None = None
        self._area = 0.0
        self._detected_area = 0.0

    @property
    def shape(self) -> shapely.Polygon:
        if self._shape is None:
            self._shape = polygon_of(self.nucleus)
            self._area = self._detected_area = float(self._shape.area)
        return self._shape

    @property
    def area(self) -> float:
        self.shape  # noqa: B018 (builds it)
        return self._area

    def lose(self, winner: shapely.Polygon) -> bool:
        """Give up the area shared with ``winner`` (overlaps.trimmed); False when nothing
        worth keeping is left. The bounding box stays as it was (it only grows the wait)."""
        rest = trimmed(self.shape, winner, self._detected_area)
        if rest is None:
            return False
        self._shape, self._area = rest, float(rest.area)
        self.nucleus = with_polygon(self.nucleus, rest)
        return True


class BorderDeduplicator:
    """Streaming removal of nuclei reported by two neighbouring tiles (working px).

    Feed the owned nuclei of each tile, tile by tile in raster order, to :meth:`add`; it returns
    the nuclei that are final. :meth:`flush` returns the rest at the end.

    A new nucleus is a duplicate of a held nucleus from *another* tile when their polygons
    overlap with IoU > ``iou_threshold`` or intersection / smaller area > ``overlap_threshold``;
    the higher score survives (the earlier one on a tie). Two nuclei of different tiles that
    overlap without being duplicates share their area by the rule of
    :mod:`~wsi_frgnet.engine.overlaps`; nuclei of one tile were settled before they came here.

    Memory is bounded: future tiles own centroids (up to ``ownership_tolerance``, as given to
    :func:`keep_owned`) below the current row or right of the current core, and a nucleus
    extends at most its bounding-box side from its centroid, so a held nucleus is released as soon
    as its bounding box is ``margin`` px clear of that future region. What stays held is a band
    of ``~2 * margin`` px along the bottom of the current tile row and the right edge of the
    current tile. ``margin`` defaults to the tiles' context (the largest nucleus that fits, see
    the pipeline warns) plus ``ownership_tolerance``; larger nuclei may escape de-duplication.
    """

    def __init__(
        self,
        iou_threshold: float = 0.5,
        overlap_threshold: float = 0.7,
        margin: float | None = None,
        ownership_tolerance: float = OWNERSHIP_TOLERANCE,
        cell_size: float = 64.0,
    ) -> None:
        if cell_size <= 0:
            raise ValueError(f"cell_size {cell_size}: must be positive")
        self.iou_threshold = iou_threshold
        self.overlap_threshold = overlap_threshold
        self.margin = margin
        self.ownership_tolerance = ownership_tolerance
        self.cell_size = float(cell_size)
        self._held: dict[int, _Candidate] = {}
        self._grid: dict[tuple[int, int], set[int]] = {}
        self._next_id = 0
        self._position: tuple[int, int] | None = None  # (core y, core x) of the last tile
        # lazy-deletion heaps of (key, id): every held id is in _by_bottom and in exactly one of
        # _waiting_row (bottom band of the row, not yet releasable by x) or _by_right
        self._by_bottom: list[tuple[float, int]] = []
        self._by_top: list[tuple[float, int]] = []  # held tops, for the frontier
        self._above = -math.inf  # no nucleus of a future tile reaches above this (working px)
        self._waiting_row: list[tuple[float, int]] = []
        self._by_right: list[tuple[float, int]] = []
        self.replaced = 0  # earlier nuclei replaced by a higher-scoring duplicate
        self.dropped = 0  # new nuclei dropped as duplicates of a held one
        self.trimmed_away = 0  # nuclei dropped because an overlap left too little of them

    @property
    def frontier(self) -> float:
        """Working px y above which no nucleus still to come (held, or of a future tile) reaches:
        every nucleus returned later has its bounding box's top at or below it."""
        while self._by_top and self._by_top[0][1] not in self._held:
            heapq.heappop(self._by_top)
        return min(self._above, self._by_top[0][0]) if self._by_top else self._above

    @property
    def held(self) -> int:
        """Number of nuclei held (not yet final)."""
        return len(self._held)

    def add(self, tile: Tile, nuclei: Sequence[Nucleus]) -> list[Nucleus]:
        """Take the owned nuclei of ``tile`` (working px); return the nuclei that became final.

        Raises ValueError when tiles do not come in raster order.
        """
        core_x, core_y, core_width, core_height = tile.core
        position = (core_y, core_x)
        if self._position is not None and position <= self._position:
            raise ValueError(f"tile {tile.index} with core {tile.core} is not after the previous tile in raster order")
        self._position = position
        if self.margin is None:
            self.margin = float(max(tile.context, 0)) + self.ownership_tolerance
        margin = self.margin

        above = core_y - margin  # clear of every future centroid by more than margin
        self._above = above
        row_bottom_limit = core_y + core_height - margin
        left_of = core_x + core_width - margin
        final = []
        nuclei = list(nuclei)
        for nucleus, bounds in zip(nuclei, _bounds(nuclei)):
            candidate = _Candidate(nucleus, tile.index, bounds)
            if not self._survives(candidate):
                continue
            bottom, right = candidate.bounds[3], candidate.bounds[2]
            if bottom <= above or (bottom <= row_bottom_limit and right <= left_of):
                final.append(candidate.nucleus)  # no future tile can reach it: never stored
            else:
                self._hold(candidate, row_bottom_limit)
        return final + self._release(above, row_bottom_limit, left_of)

    def flush(self) -> list[Nucleus]:
        """All nuclei still held (the plan is finished); the deduplicator is then empty."""
        final = [held.nucleus for held in self._held.values()]
        self._held.clear()
        self._grid.clear()
        self._by_bottom.clear()
        self._by_top.clear()
        self._waiting_row.clear()
        self._by_right.clear()
        return final

    # -- internals ---------------------------------------------------------------------------

    def _survives(self, candidate: _Candidate) -> bool:
        """Resolve duplicates and overlaps with held nuclei of other tiles: False when the
        candidate loses (it is dropped); otherwise the held duplicates it beats are forgotten
        and the overlaps are settled by the rule of :mod:`~wsi_frgnet.engine.overlaps`."""
        candidate.cells = self._cells(candidate.bounds)
        others = sorted({i for cell in candidate.cells for i in self._grid.get(cell, ()) if self._held[i].tile != candidate.tile})
        duplicates = [i for i in others if self._same(candidate, self._held[i])]
        if duplicates:
            if not candidate.nucleus.score > max(self._held[i].nucleus.score for i in duplicates):
                self.dropped += 1
                return False
            for other_id in duplicates:
                self._forget(other_id)
                self.replaced += 1
        for other_id in others:
            other = self._held.get(other_id)
            if other is None or not self._overlap(candidate, other):
                continue
            if candidate.nucleus.score > other.nucleus.score:  # the held one came first: it wins a tie
                if not other.lose(candidate.shape):
                    self._forget(other_id)
                    self.trimmed_away += 1
            elif not candidate.lose(other.shape):
                self.trimmed_away += 1
                return False
        return True

    @staticmethod
    def _overlap(new: _Candidate, other: _Candidate) -> bool:
        x0, y0, x1, y1 = new.bounds
        ox0, oy0, ox1, oy1 = other.bounds
        if x1 <= ox0 or ox1 <= x0 or y1 <= oy0 or oy1 <= y0:
            return False
        return float(shapely.area(shapely.intersection(new.shape, other.shape))) > 0.0

    def _hold(self, candidate: _Candidate, row_bottom_limit: float) -> None:
        held_id = self._next_id
        self._next_id += 1
        self._held[held_id] = candidate
        for cell in candidate.cells:
            self._grid.setdefault(cell, set()).add(held_id)
        x0, y0, x1, y1 = candidate.bounds
        heapq.heappush(self._by_bottom, (y1, held_id))
        heapq.heappush(self._by_top, (y0, held_id))
        if y1 <= row_bottom_limit:
            heapq.heappush(self._by_right, (x1, held_id))
        else:
            heapq.heappush(self._waiting_row, (y1, held_id))

    def _same(self, new: _Candidate, other: _Candidate) -> bool:
        x0, y0, x1, y1 = new.bounds
        ox0, oy0, ox1, oy1 = other.bounds
        if x1 <= ox0 or ox1 <= x0 or y1 <= oy0 or oy1 <= y0:
            return False
        intersection = float(new.shape.intersection(other.shape).area)
        if intersection <= 0:
            return False
        union = new.area + other.area - intersection
        smaller = min(new.area, other.area)
        return (union > 0 and intersection / union > self.iou_threshold) or (
            smaller > 0 and intersection / smaller > self.overlap_threshold
        )

    def _release(self, above: float, row_bottom_limit: float, left_of: float) -> list[Nucleus]:
        """Held nuclei that no tile after the current one can reach."""
        final: list[Nucleus] = []
        # 1. clear of the current row and everything after it
        while self._by_bottom and self._by_bottom[0][0] <= above:
            _, held_id = heapq.heappop(self._by_bottom)
            if held_id in self._held:
                final.append(self._forget(held_id))
        # 2. clear of the rows below: only tiles right of this one could still reach them
        while self._waiting_row and self._waiting_row[0][0] <= row_bottom_limit:
            bottom, held_id = heapq.heappop(self._waiting_row)
            if held_id in self._held:
                heapq.heappush(self._by_right, (self._held[held_id].bounds[2], held_id))
        while self._by_right and self._by_right[0][0] <= left_of:
            _, held_id = heapq.heappop(self._by_right)
            if held_id in self._held:
                final.append(self._forget(held_id))
        return final

    def _forget(self, held_id: int) -> Nucleus:
        held = self._held.pop(held_id)
        for cell in held.cells:
            members = self._grid.get(cell)
            if members is not None:
                members.discard(held_id)
                if not members:
                    del self._grid[cell]
        return held.nucleus

    def _cells(self, bounds: tuple[float, float, float, float]) -> list[tuple[int, int]]:
        x0, y0, x1, y1 = bounds
        size = self.cell_size
        return [
            (cx, cy)
            for cy in range(math.floor(y0 / size), math.floor(y1 / size) + 1)
            for cx in range(math.floor(x0 / size), math.floor(x1 / size) + 1)
        ]


def _bounds(nuclei: Sequence[Nucleus]) -> list[tuple[float, float, float, float]]:
    """(x0, y0, x1, y1) of each nucleus' polygon, vectorised over polygons of equal length."""
    out: list = [None] * len(nuclei)
    for indices, stacked in stacked_by_length([nucleus.polygon for nucleus in nuclei]):
        boxes = bounding_boxes(stacked).tolist()
        for index, box in zip(indices.tolist(), boxes):
            out[index] = tuple(box)
    return out
