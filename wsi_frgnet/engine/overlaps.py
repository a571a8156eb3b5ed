"""Nuclei never overlap: the higher-scoring nucleus keeps the area two nuclei share.

Rule (one place, used within a tile and across tile borders): where two nuclei overlap, the
one with the lower detection probability (the later one on a tie) loses the shared area. What
is left of it is kept when it is still one polygon without a hole, at least ``MIN_KEPT_SHARE``
of its area as detected and at least ``min_area`` px²; when the cut leaves several pieces only
the largest counts. Otherwise the nucleus is dropped: a detection that mostly lies inside a
better one, or that wraps around it, is a false one. Frame: any px (tile or working).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import shapely

from wsi_frgnet.nucleus import Nucleus

MIN_KEPT_SHARE = 0.5  # share of its detected area a trimmed nucleus must keep
MIN_AREA = 20.0  # px²; as PostprocessConfig.min_area


def polygon_of(nucleus: Nucleus) -> shapely.Polygon:
    """The nucleus' outline as a valid shapely polygon (repaired, largest part)."""
    polygon = shapely.Polygon(nucleus.polygon)
    if polygon.is_valid:
        return polygon
    parts = [part for part in shapely.get_parts(shapely.make_valid(polygon)) if isinstance(part, shapely.Polygon)]
    return max(parts, key=lambda part: part.area) if parts else shapely.Polygon()


def trimmed(polygon: shapely.Polygon, winner: shapely.Geometry, detected_area: float, min_area: float = MIN_AREA) -> shapely.Polygon | None:
    """``polygon`` without the area of ``winner``: the rest (see the module docstring) or None
    when the nucleus is dropped. ``detected_area``: its area before any cut, px²."""
    rest = shapely.difference(polygon, winner)
    pieces = [piece for piece in shapely.get_parts(rest) if isinstance(piece, shapely.Polygon) and not piece.is_empty]
    if not pieces:
        return None
    largest = max(pieces, key=lambda piece: piece.area)
    if largest.interiors or largest.area < max(min_area, MIN_KEPT_SHARE * detected_area):
        return None
    return largest


def with_polygon(nucleus: Nucleus, polygon: shapely.Polygon) -> Nucleus:
    """``nucleus`` with ``polygon`` as its outline (closed ring, float64)."""
    return replace(nucleus, polygon=np.asarray(polygon.exterior.coords, dtype=np.float64))


def resolve_overlaps(nuclei: Sequence[Nucleus], min_area: float = MIN_AREA) -> list[Nucleus]:
    """The nuclei with every overlap resolved by the rule of this module, in their order
    (trimmed nuclei keep their place; dropped ones are left out)."""
    nuclei = list(nuclei)
    if len(nuclei) < 2:
        return nuclei
    polygons = [polygon_of(nucleus) for nucleus in nuclei]
    tree = shapely.STRtree(polygons)
    first, second = tree.query(polygons, predicate="intersects")
    pairs = first < second
    first, second = first[pairs], second[pairs]
    if not len(first):
        return nuclei
    scores = np.array([nucleus.score for nucleus in nuclei])
    rank = np.lexsort((np.arange(len(nuclei)), -scores))  # best first; earlier wins a tie
    position = np.empty(len(nuclei), dtype=np.int64)
    position[rank] = np.arange(len(nuclei))
    # For every overlapping pair: (loser, winner) by rank.
    loser = np.where(position[first] > position[second], first, second)
    winner = np.where(position[first] > position[second], second, first)
    areas = shapely.area(np.asarray(polygons, dtype=object))
    alive = np.ones(len(nuclei), dtype=bool)
    result = list(nuclei)
    for index in rank:  # winners are settled before their losers
        beaten_by = winner[loser == index]
        beaten_by = beaten_by[alive[beaten_by]]
        if not len(beaten_by):
            continue
        overlap = shapely.union_all([polygons[other] for other in beaten_by])
        if shapely.area(shapely.intersection(polygons[index], overlap)) <= 0.0:
            continue  # they only touch
        rest = trimmed(polygons[index], overlap, float(areas[index]), min_area)
        if rest is None:
            alive[index] = False
            continue
        polygons[index] = rest
        result[index] = with_polygon(nuclei[index], rest)
    return [nucleus for nucleus, keep in zip(result, alive) if keep]
