"""Tiling of a slide region: pure arithmetic, no I/O, no model.

Frame: everything here is in *working px*, the pixels of the model's own resolution.
``working px = level-0 px / factor`` with ``factor = model µm/px ÷ slide µm/px`` (level-0 px
per working px); x right, y down, pixel (row r, column c) covers [c, c+1) x [r, r+1).
:func:`region_to_working` turns a level-0 rectangle into working px.

Each :class:`Tile` has

- a *read* rectangle, ``tile_size`` x ``tile_size``: what the network sees. It is the core's
  grid cell grown by ``context`` on every side and may reach outside the region or the slide;
  the reader pads (white) where there are no pixels. Where the region ends inside a grid cell,
  the read rectangle may instead end ``context`` px after the core, rounded up to a multiple
  of the network's size multiple (``trim_to``): no network work on pixels no core needs;
- a *core* rectangle: the cores of all tiles partition the region exactly. Cores are cells of a
  grid anchored at the slide's origin (cut at the region's edges), not at the region's corner:
  the network's output at a place depends on where that place falls in its input (a shift by
  less than its deepest stride moves outlines), so a place must always be read the same way.

A tile is responsible for ("owns") exactly the objects whose centroid lies in its core
(half-open, :func:`wsi_frgnet.engine.merge.keep_owned`), so every object of the region is reported by exactly one tile, provided
objects are smaller than ``context`` (an object owned by a tile is then seen whole by it). Two
tiles may place a border object's centroid slightly differently: :mod:`wsi_frgnet.engine.merge` keeps
centroids a little outside the core and removes the resulting duplicates.

Contract with the slide pipeline::

    tiles = plan_tiles(region_working, tile_size, context)        # raster order
    tiles = tissue.tiles_with_tissue(tiles, mask, mask_downsample) # optional filters keep order
    for tile in tiles:                                             # in this order
        nuclei = model(read(tile.read))                            # tile-local px
        nuclei = merge.translate(nuclei, *tile.read[:2])           # → working px
        final = deduplicator.add(tile, merge.keep_owned(nuclei, tile))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Rect = tuple[int, int, int, int]  # (x, y, width, height)


@dataclass(frozen=True, slots=True)
class Tile:
    """One network tile, in working px.

    index: position in the plan (raster order, before any filtering).
    read: (x, y, width, height) the network reads: the core's grid cell grown by the context on
    every side, ``tile_size`` square or trimmed at the region's right and bottom edges (or
    to the tissue, :func:`~wsi_frgnet.engine.tissue.tiles_with_tissue`); may extend beyond the
    region (the reader pads).
    core: (x, y, width, height) this tile is responsible for; cores partition the region.
    context: px by which the plan grew the core's grid cell on every side: the farthest an
    object the tile owns is trusted to reach from its centroid.
    """

    index: int
    read: Rect
    core: Rect
    context: int


def plan_tiles(region: Rect, tile_size: int, context: int, anchored: bool = True, trim_to: int | None = None) -> list[Tile]:
    """Tiles covering ``region`` (x, y, width, height in working px), in raster order (rows top
    to bottom, left to right within a row).

    Cores lie on a grid of ``tile_size - 2 * context`` px anchored at the slide's origin (working
    px 0, 0), cut at the region's edges; read rectangles are ``tile_size`` square, a grid cell
    grown by ``context``. So a place of the slide is always read by the same window, whatever
    the region (an ROI, the tissue's bounds), and gets the same outlines. ``anchored`` False: the
    grid starts at the region's corner instead (fewer tiles where only the tiles' pixels matter,
    as for training samples). ``trim_to`` (the network's size multiple): read rectangles whose
    core the region's right or bottom edge cuts end ``context`` px after the core, rounded up
    to a multiple of it, instead of a whole tile after their start. Raises ValueError when
    ``tile_size <= 2 * context``, for a negative context or an empty region.
    """
    x, y, width, height = (int(v) for v in region)
    if context < 0:
        raise ValueError(f"context {context}: must be >= 0")
    if tile_size <= 2 * context:
        raise ValueError(f"tile size {tile_size} must be larger than twice the context ({context})")
    if width <= 0 or height <= 0:
        raise ValueError(f"region {tuple(region)}: width and height must be positive")
    core_size = tile_size - 2 * context
    start_x, start_y = (x // core_size * core_size, y // core_size * core_size) if anchored else (x, y)
    tiles = []
    for grid_y in range(start_y, y + height, core_size):
        core_y = max(grid_y, y)
        core_height = min(grid_y + core_size, y + height) - core_y
        for grid_x in range(start_x, x + width, core_size):
            core_x = max(grid_x, x)
            core_width = min(grid_x + core_size, x + width) - core_x
            read_x, read_y = grid_x - context, grid_y - context
            read_width = read_height = tile_size
            if trim_to:
                read_width = min(tile_size, _round_up(core_x + core_width + context - read_x, trim_to))
                read_height = min(tile_size, _round_up(core_y + core_height + context - read_y, trim_to))
            tiles.append(
                Tile(
                    index=len(tiles),
                    read=(read_x, read_y, read_width, read_height),
                    core=(core_x, core_y, core_width, core_height),
                    context=context,
                )
            )
    return tiles


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def region_to_working(region_level0: tuple[float, float, float, float], factor: float) -> Rect:
    """The smallest whole-pixel working-px rectangle that covers a level-0 rectangle
    (x, y, width, height); ``factor`` = level-0 px per working px."""
    if factor <= 0:
        raise ValueError(f"factor {factor}: must be positive")
    x, y, width, height = region_level0
    left, top = math.floor(x / factor), math.floor(y / factor)
    right, bottom = math.ceil((x + width) / factor), math.ceil((y + height) / factor)
    return left, top, right - left, bottom - top
