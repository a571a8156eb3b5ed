"""Tiling: cores partition the region, reads are constant-size cores grown by the context."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_frgnet.engine.tiling import (
    Tile,
    plan_tiles,
    region_to_working,
)

REGIONS = [
    (0, 0, 1000, 800),  # not divisible by the core
    (0, 0, 768, 384),  # divisible by the core (384)
    (37, 211, 913, 407),  # non-zero origin
    (5, 7, 10, 3),  # smaller than one tile
    (-50, -20, 1, 1),  # one pixel, negative origin
]


def _painted(region, tiles):
    x, y, width, height = region
    counts = np.zeros((height, width), dtype=np.int32)
    for tile in tiles:
        cx, cy, cw, ch = tile.core
        assert cw > 0 and ch > 0
        assert x <= cx and y <= cy and cx + cw <= x + width and cy + ch <= y + height
        counts[cy - y : cy - y + ch, cx - x : cx - x + cw] += 1
    return counts


@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize(("tile_size", "context"), [(512, 64), (256, 0), (96, 40)])
def test_cores_cover_every_pixel_once(region, tile_size, context):
    tiles = plan_tiles(region, tile_size, context)
    assert (_painted(region, tiles) == 1).all()
    assert [t.index for t in tiles] == list(range(len(tiles)))


@pytest.mark.parametrize("region", REGIONS)
def test_reads_are_cores_grown_by_context(region):
    tile_size, context = 512, 64
    tiles = plan_tiles(region, tile_size, context)
    for tile in tiles:
        assert tile.read[2:] == (tile_size, tile_size)
        # The core lies inside the read window at least the context away from its edges.
        assert tile.core[0] - tile.read[0] >= context and tile.read[0] + tile_size - (tile.core[0] + tile.core[2]) >= context
        assert tile.core[1] - tile.read[1] >= context and tile.read[1] + tile_size - (tile.core[1] + tile.core[3]) >= context
        assert tile.context >= context
        if tile.core[2:] == (tile_size - 2 * context,) * 2:  # interior / full cores
            grown = (tile.core[0] - context, tile.core[1] - context, tile.core[2] + 2 * context, tile.core[3] + 2 * context)
            assert tile.read == grown


def test_raster_order_and_edge_cores():
    tiles = plan_tiles((0, 0, 1000, 800), 512, 64)
    assert len(tiles) == 3 * 3
    keys = [(t.core[1], t.core[0]) for t in tiles]
    assert keys == sorted(keys)
    assert tiles[2].core == (768, 0, 232, 384)
    assert tiles[-1].core == (768, 768, 232, 32)
    assert tiles[-1].read == (704, 704, 512, 512)


@pytest.mark.parametrize("region", REGIONS)
def test_a_place_is_read_by_the_same_window_whatever_the_region(region):
    tiles = plan_tiles(region, 512, 64)
    for tile in tiles:
        assert tile.read[0] % 384 == 384 - 64 and tile.read[1] % 384 == 384 - 64  # grid cells grown by the context
    other = plan_tiles((region[0] - 413, region[1] - 5, region[2] + 900, region[3] + 40), 512, 64)
    for tile in tiles:
        x, y, width, height = tile.core
        for px, py in ((x, y), (x + width - 1, y + height - 1), (x + width // 2, y + height // 2)):
            (holder,) = [t for t in other if t.core[0] <= px < t.core[0] + t.core[2] and t.core[1] <= py < t.core[1] + t.core[3]]
            assert holder.read == tile.read


@pytest.mark.parametrize("region", REGIONS)
def test_trimmed_reads_keep_the_cores_and_their_context(region):
    tile_size, context, multiple = 512, 64, 32
    whole = plan_tiles(region, tile_size, context)
    trimmed = plan_tiles(region, tile_size, context, trim_to=multiple)
    assert [t.core for t in trimmed] == [t.core for t in whole]
    for tile, untrimmed in zip(trimmed, whole):
        x, y, width, height = tile.read
        assert (x, y) == untrimmed.read[:2] and width <= tile_size and height <= tile_size
        assert width % multiple == 0 and height % multiple == 0
        assert x + width - (tile.core[0] + tile.core[2]) >= context and y + height - (tile.core[1] + tile.core[3]) >= context
        if (width, height) != (tile_size, tile_size):  # only where the region's edge cuts the core
            assert tile.core[0] + tile.core[2] == region[0] + region[2] or tile.core[1] + tile.core[3] == region[1] + region[3]


def test_trimming_saves_the_pixels_past_the_region():
    whole = plan_tiles((0, 0, 1000, 800), 512, 64)
    trimmed = plan_tiles((0, 0, 1000, 800), 512, 64, trim_to=32)
    assert trimmed[2].read == (704, -64, 384, 512)  # core 768-1000: 360 px from 704 to 1064, rounded up
    assert trimmed[-1].read == (704, 704, 384, 160)  # core rows 768-800: 160 px from 704 to 864
    assert sum(t.read[2] * t.read[3] for t in trimmed) < 0.8 * sum(t.read[2] * t.read[3] for t in whole)


def test_unanchored_grid_starts_at_the_region_corner():
    (tile,) = plan_tiles((5, 7, 10, 3), 128, 16, anchored=False)
    assert tile.core == (5, 7, 10, 3) and tile.read == (-11, -9, 128, 128)
    assert len(plan_tiles((40, 40, 192, 192), 128, 16, anchored=False)) == 4  # 9 when anchored
    assert len(plan_tiles((40, 40, 192, 192), 128, 16)) == 9


def test_tiny_region_gives_one_tile():
    (tile,) = plan_tiles((5, 7, 10, 3), 128, 16)
    assert tile.core == (5, 7, 10, 3)
    assert tile.read == (-16, -16, 128, 128)  # the grid cell (0, 0, 96, 96) grown by the context


@pytest.mark.parametrize(("tile_size", "context"), [(128, 64), (128, 100), (10, 5), (64, -1)])
def test_tile_size_must_exceed_twice_the_context(tile_size, context):
    with pytest.raises(ValueError):
        plan_tiles((0, 0, 100, 100), tile_size, context)


def test_empty_region_is_an_error():
    with pytest.raises(ValueError):
        plan_tiles((0, 0, 0, 10), 128, 16)


def test_frame_conversions():
    assert region_to_working((0, 0, 1000, 800), 2.0) == (0, 0, 500, 400)
    assert region_to_working((3, 5, 10, 10), 2.0) == (1, 2, 6, 6)  # covers [3, 13) x [5, 15)
    with pytest.raises(ValueError):
        region_to_working((0, 0, 1, 1), 0)


def test_tile_is_frozen():
    tile = Tile(0, (0, 0, 10, 10), (2, 2, 6, 6), 2)
    with pytest.raises(AttributeError):
        tile.index = 1  # type: ignore[misc]
