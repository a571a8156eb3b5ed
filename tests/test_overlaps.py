"""Nuclei never overlap: the rule of wsi_frgnet.engine.overlaps, within a tile and across
tile borders (the deduplicator), and on a whole slide."""

from __future__ import annotations

import numpy as np
import shapely

from wsi_frgnet.engine.merge import BorderDeduplicator
from wsi_frgnet.engine.overlaps import resolve_overlaps
from wsi_frgnet.engine.tiling import Tile
from wsi_frgnet.nucleus import Nucleus


def disc(cx: float, cy: float, radius: float, score: float, vertices: int = 48) -> Nucleus:
    angles = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    ring = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)
    return Nucleus(np.vstack([ring, ring[:1]]), score, 0.9)


def area(nucleus: Nucleus) -> float:
    return shapely.Polygon(nucleus.polygon).area


def overlap(a: Nucleus, b: Nucleus) -> float:
    return shapely.Polygon(a.polygon).intersection(shapely.Polygon(b.polygon)).area


def test_the_higher_score_keeps_the_shared_area():
    high, low = disc(50, 50, 10, 0.99), disc(62, 50, 10, 0.90)
    kept = resolve_overlaps([low, high])
    assert len(kept) == 2
    trimmed_low, same_high = kept
    assert same_high is high  # untouched, in its place
    assert overlap(trimmed_low, high) < 1e-6
    assert area(trimmed_low) < area(low)
    assert abs(area(trimmed_low) - (area(low) - overlap(low, high))) < 1e-6


def test_a_nucleus_left_with_too_little_or_with_a_hole_is_dropped():
    high = disc(50, 50, 10, 0.99)
    mostly_inside = disc(53, 50, 8, 0.80)  # keeps far less than half of itself
    around = disc(50, 50, 16, 0.70)  # the winner would leave a hole in it
    assert resolve_overlaps([high, mostly_inside]) == [high]
    assert resolve_overlaps([around, high]) == [high]


def test_ties_go_to_the_earlier_nucleus_and_touching_nuclei_stay():
    first, second = disc(50, 50, 10, 0.9), disc(60, 50, 10, 0.9)
    kept = resolve_overlaps([first, second])
    assert kept[0] is first and area(kept[1]) < area(second)
    square = lambda x: Nucleus(np.array([[x, 0], [x + 5, 0], [x + 5, 5], [x, 5], [x, 0]], float), 0.5, 0.5)  # noqa: E731
    left, right = square(0.0), square(5.0)  # share an edge only
    assert resolve_overlaps([left, right]) == [left, right]


def test_a_chain_of_overlaps_is_settled_best_first():
    nuclei = [disc(40 + 12 * i, 50, 8, score) for i, score in enumerate([0.7, 0.95, 0.8, 0.99])]
    kept = resolve_overlaps(nuclei)
    for i, a in enumerate(kept):
        for b in kept[i + 1 :]:
            assert overlap(a, b) < 1e-6


def test_overlaps_across_tiles_are_settled_by_the_deduplicator():
    left = Tile(0, (-64, -64, 512, 512), (0, 0, 384, 384), 64)
    right = Tile(1, (320, -64, 512, 512), (384, 0, 384, 384), 64)
    held = disc(378, 100, 12, 0.95)  # owned by the left tile
    newcomer = disc(394, 100, 10, 0.80)  # owned by the right tile, overlapping the held one
    winner = disc(392, 200, 10, 0.99)
    loser = disc(378, 200, 10, 0.60)
    deduplicator = BorderDeduplicator(margin=66)
    out = deduplicator.add(left, [held, loser]) + deduplicator.add(right, [newcomer, winner]) + deduplicator.flush()
    assert len(out) == 4
    for i, a in enumerate(out):
        for b in out[i + 1 :]:
            assert overlap(a, b) < 1e-6
    assert any(nucleus is held for nucleus in out) and any(nucleus is winner for nucleus in out)
