"""Merge: ownership + streaming de-duplication give every nucleus back exactly once, with
bounded memory; simulated tiles, no model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely

from wsi_frgnet.engine.merge import (
    OWNERSHIP_TOLERANCE,
    BorderDeduplicator,
    keep_owned,
    scale,
    translate,
)
from wsi_frgnet.engine.tiling import Tile, plan_tiles
from wsi_frgnet.nucleus import Nucleus

REGION = (0, 0, 1000, 800)
TILE_SIZE, CONTEXT = 256, 40  # core 176


def disc(cx: float, cy: float, radius: float, score: float = 0.9, points: int = 32) -> Nucleus:
    angles = np.linspace(0, 2 * np.pi, points, endpoint=False)
    ring = np.column_stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)])
    return Nucleus(polygon=np.vstack([ring, ring[:1]]), score=score, guide=float("nan"))


def make_discs(seed: int, count: int = 200) -> list[tuple[float, float, float]]:
    """(cx, cy, r) of non-overlapping discs in REGION: first some straddling core borders and
    corners on purpose, then random ones."""
    rng = np.random.default_rng(seed)
    core = TILE_SIZE - 2 * CONTEXT
    wanted = []
    for gx in range(core, REGION[2], core):
        for gy in range(core, REGION[3], core):
            wanted.append((gx + rng.uniform(-0.8, 0.8), gy + rng.uniform(-0.8, 0.8)))  # corners
            wanted.append((gx + rng.uniform(-0.8, 0.8), gy - core / 2))  # vertical borders
            wanted.append((gx - core / 2, gy + rng.uniform(-0.8, 0.8)))  # horizontal borders
    discs: list[tuple[float, float, float]] = []

    def place(cx, cy, r):
        if all(math.hypot(cx - x, cy - y) > r + rr + 2 for x, y, rr in discs):
            discs.append((cx, cy, r))

    for cx, cy in wanted:
        place(cx, cy, rng.uniform(6, 12))
    while len(discs) < count:
        r = rng.uniform(6, 12)
        place(rng.uniform(r, REGION[2] - r), rng.uniform(r, REGION[3] - r), r)
    return discs


def detections(tile: Tile, discs, rng) -> list[Nucleus]:
    """What a model would report for the tile, in tile-local px: every disc whose centroid lies in
    the read rectangle, each tile seeing it slightly differently (±1 px, ±5 % radius, any score)."""
    x, y, width, height = tile.read
    found = []
    for cx, cy, r in discs:
        if x <= cx < x + width and y <= cy < y + height:
            jx, jy = rng.uniform(-1, 1, size=2)
            found.append(disc(cx + jx - x, cy + jy - y, r * rng.uniform(0.95, 1.05), score=rng.uniform(0.3, 1.0)))
    return found


def run_tiles(tiles, discs, seed, deduplicator=None):
    rng = np.random.default_rng(seed)
    deduplicator = BorderDeduplicator() if deduplicator is None else deduplicator
    out, most_held = [], 0
    for tile in tiles:
        placed = translate(detections(tile, discs, rng), tile.read[0], tile.read[1])
        out.extend(deduplicator.add(tile, keep_owned(placed, tile)))
        most_held = max(most_held, deduplicator.held)
    flushed = deduplicator.flush()
    assert deduplicator.held == 0
    # streaming: by the end only the last row's bottom band and the last tile's edge are held
    assert len(flushed) <= most_held
    return out + flushed, most_held


def match(nuclei: list[Nucleus], discs) -> list[int]:
    """Index of the disc each nucleus matches with IoU > 0.5 (-1: none)."""
    centres = np.array([(cx, cy) for cx, cy, _ in discs])
    truth = [shapely.Polygon(disc(cx, cy, r).polygon) for cx, cy, r in discs]
    matched = []
    for nucleus in nuclei:
        centre = np.array(nucleus.centroid)
        nearest = int(np.argmin(np.linalg.norm(centres - centre, axis=1)))
        polygon = shapely.Polygon(nucleus.polygon)
        iou = polygon.intersection(truth[nearest]).area / polygon.union(truth[nearest]).area
        matched.append(nearest if iou > 0.5 else -1)
    return matched


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_disc_comes_back_exactly_once(seed):
    discs = make_discs(seed)
    tiles = plan_tiles(REGION, TILE_SIZE, CONTEXT)
    deduplicator = BorderDeduplicator()
    out, most_held = run_tiles(tiles, discs, seed, deduplicator)
    assert deduplicator.replaced + deduplicator.dropped > 20  # the border discs were seen twice
    matched = match(out, discs)
    assert -1 not in matched
    assert sorted(matched) == list(range(len(discs)))

    # memory: never more than two tile rows' worth of nuclei held
    core = TILE_SIZE - 2 * CONTEXT
    rows = [sum(1 for _, cy, _ in discs if y <= cy < y + 2 * core) for y in range(0, REGION[3], core)]
    assert most_held <= max(rows)
    assert most_held < len(discs) / 3


def test_without_tolerance_border_nuclei_can_be_lost_or_doubled():
    """Why keep_owned has a tolerance: strict ownership of jittered detections is not enough."""
    discs = make_discs(0)
    tiles = plan_tiles(REGION, TILE_SIZE, CONTEXT)
    rng = np.random.default_rng(0)
    owned = []
    for tile in tiles:
        placed = translate(detections(tile, discs, rng), tile.read[0], tile.read[1])
        owned.extend(keep_owned(placed, tile, tolerance=0))
    matched = match(owned, discs)
    assert sorted(matched) != list(range(len(discs)))


def test_skipped_tiles_keep_order_and_give_no_duplicates():
    discs = make_discs(3)
    tiles = plan_tiles(REGION, TILE_SIZE, CONTEXT)
    dropped = {1, 5, 6, 13}
    kept = [t for t in tiles if t.index not in dropped]
    out, _ = run_tiles(kept, discs, seed=3)
    matched = match(out, discs)
    assert -1 not in matched
    assert len(set(matched)) == len(matched)

    def clear_of_dropped(cx, cy):
        tol = OWNERSHIP_TOLERANCE
        return not any(
            t.core[0] - tol <= cx < t.core[0] + t.core[2] + tol and t.core[1] - tol <= cy < t.core[1] + t.core[3] + tol
            for t in tiles
            if t.index in dropped
        )

    expected = {i for i, (cx, cy, _) in enumerate(discs) if clear_of_dropped(cx, cy)}
    assert expected <= set(matched)


def _tiles_side_by_side():
    left, right = plan_tiles((0, 0, 200, 100), 140, 20)[:2]
    assert left.core == (0, 0, 100, 100) and right.core == (100, 0, 100, 100)
    return left, right


def test_higher_score_wins_either_way():
    left, right = _tiles_side_by_side()
    for first, second, winner in [(0.6, 0.9, 0.9), (0.9, 0.6, 0.9), (0.7, 0.7, 0.7)]:
        deduplicator = BorderDeduplicator()
        out = deduplicator.add(left, [disc(99.5, 50, 8, first)])
        out += deduplicator.add(right, [disc(100.5, 50.5, 8, second)])
        out += deduplicator.flush()
        assert len(out) == 1 and out[0].score == winner
    # on a tie the earlier one stays
    deduplicator = BorderDeduplicator()
    early = disc(99.5, 50, 8, 0.7)
    out = deduplicator.add(left, [early]) + deduplicator.add(right, [disc(100.5, 50, 8, 0.7)]) + deduplicator.flush()
    assert out == [early]


def test_small_inside_large_counts_as_duplicate_but_neighbours_do_not():
    left, right = _tiles_side_by_side()
    deduplicator = BorderDeduplicator()
    out = deduplicator.add(left, [disc(98, 50, 10, 0.5), disc(60, 50, 8, 0.9)])
    # inside the big one (overlap/smaller = 1, IoU 0.36): a duplicate; a touching neighbour is not
    out += deduplicator.add(right, [disc(101, 50, 6, 0.8), disc(120, 50, 8, 0.4)])
    out += deduplicator.flush()
    assert sorted(round(n.score, 1) for n in out) == [0.4, 0.8, 0.9]


def test_same_tile_nuclei_are_never_merged():
    (tile,) = plan_tiles((0, 0, 100, 100), 140, 20)
    deduplicator = BorderDeduplicator()
    out = deduplicator.add(tile, [disc(50, 50, 8, 0.9), disc(51, 50, 8, 0.8)]) + deduplicator.flush()
    assert len(out) == 2


def test_interior_nuclei_are_final_at_once():
    left, right = _tiles_side_by_side()
    deduplicator = BorderDeduplicator()
    interior, at_right_edge = disc(30, 30, 6), disc(95, 30, 6)
    assert deduplicator.add(left, [interior, at_right_edge]) == [interior]
    assert deduplicator.held == 1


def test_tiles_out_of_raster_order_are_refused():
    left, right = _tiles_side_by_side()
    deduplicator = BorderDeduplicator()
    deduplicator.add(right, [])
    with pytest.raises(ValueError):
        deduplicator.add(left, [])


def test_translate_scale_keep_owned():
    nucleus = disc(10, 20, 3, 0.7)
    moved = translate([nucleus], 5, -2)[0]
    assert moved.centroid == pytest.approx((15, 18))
    assert moved.score == 0.7 and nucleus.centroid == pytest.approx((10, 20))
    assert scale([nucleus], 2.5)[0].centroid == pytest.approx((25, 50))
    left, right = _tiles_side_by_side()
    on_border = disc(100, 50, 5)
    assert keep_owned([on_border], left, tolerance=0) == []
    assert keep_owned([on_border], right, tolerance=0) == [on_border]
    assert keep_owned([disc(101, 50, 5)], left) != []  # within the default tolerance
    assert keep_owned([disc(105, 50, 5)], left) == []


@pytest.mark.parametrize("region", [(0, 0, 1000, 800), (37, 211, 913, 407)])
def test_keep_owned_without_tolerance_gives_every_centroid_one_tile(region):
    """Ownership as the pipeline applies it: tiny nuclei centred at random points and at the
    exact corners of the cores (where half-openness matters) each belong to exactly one tile."""
    tiles = plan_tiles(region, 200, 30)
    rng = np.random.default_rng(0)
    x, y, width, height = region
    points = np.column_stack([rng.uniform(x, x + width, 2000), rng.uniform(y, y + height, 2000)])
    corners = np.array([(t.core[0], t.core[1]) for t in tiles], dtype=np.float64)
    nuclei = [Nucleus(square_ring(px, py, 0.25), 0.9, 0.5) for px, py in np.concatenate([points, corners])]
    owners = np.zeros(len(nuclei), dtype=int)
    index = {id(nucleus): i for i, nucleus in enumerate(nuclei)}
    for tile in tiles:
        for nucleus in keep_owned(nuclei, tile, tolerance=0):
            owners[index[id(nucleus)]] += 1
    assert (owners == 1).all()
    outside = [Nucleus(square_ring(x + width, y, 0.25), 0.9, 0.5), Nucleus(square_ring(x - 0.5, y, 0.25), 0.9, 0.5)]
    assert not any(keep_owned(outside, tile, tolerance=0) for tile in tiles)


def square_ring(cx: float, cy: float, half: float) -> np.ndarray:
    """Closed square ring of side 2 * half centred at (cx, cy): its centroid is the centre."""
    return np.array([[cx - half, cy - half], [cx + half, cy - half], [cx + half, cy + half], [cx - half, cy + half], [cx - half, cy - half]])
