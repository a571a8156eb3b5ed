"""Polygons from QuPath GeoJSON exports: regions of interest, or nuclei used as labels.

Accepts a FeatureCollection, a single Feature, a JSON list of features (QuPath's older export)
or a bare geometry, plain or gzip-compressed. Coordinates are returned as written (px).
"""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from collections import Counter
from pathlib import Path

import shapely
from shapely.geometry import shape

from wsi_frgnet.errors import InputError

logger = logging.getLogger(__name__)

GEOMETRY_TYPES = frozenset(
    {"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon", "GeometryCollection"}
)


def read_polygons(path: Path, noun: str) -> list[shapely.Polygon]:
    """Every polygon of a GeoJSON file, in file order: one per Polygon, one per part of a
    MultiPolygon (also inside GeometryCollections), repaired when invalid. Other geometry types
    are skipped with a warning. ``noun`` names what the polygons are, for messages.

    Raises InputError for a missing or unreadable file, invalid JSON or GeoJSON, a malformed
    geometry, or a file without any polygon.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        document = json.loads(raw.decode("utf-8-sig"))
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not valid JSON ({error.msg} at line {error.lineno} column {error.colno})") from None
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read ({' '.join(str(error).split())})") from None
    ignored: Counter[str] = Counter()
    polygons: list[shapely.Polygon] = []
    for geometry in _geometries(document, path):
        try:
            parsed = shape(geometry)
        except Exception as error:  # shapely raises several types for malformed coordinates
            raise InputError(f"{path}: malformed {geometry.get('type')} geometry ({' '.join(str(error).split())})") from None
        polygons.extend(_polygon_parts(parsed, ignored))
    if ignored:
        logger.warning(
            "%s: ignored %s (only Polygon and MultiPolygon features are read as %s polygons)",
            path, ", ".join(f"{count} {name}" for name, count in sorted(ignored.items())), noun,
        )
    if not polygons:
        raise InputError(f"{path}: no Polygon or MultiPolygon {noun} found")
    return polygons


def _geometries(document: object, path: Path) -> list[dict]:
    """The GeoJSON geometry objects of a document (features without geometry are skipped)."""
    items = document if isinstance(document, list) else [document]
    found = []
    for item in items:
        if not isinstance(item, dict):
            raise InputError(f"{path}: expected GeoJSON objects, found {type(item).__name__}")
        kind = item.get("type")
        if kind == "FeatureCollection":
            features = item.get("features")
            if not isinstance(features, list):
                raise InputError(f"{path}: FeatureCollection without a 'features' list")
            found.extend(_geometries(features, path) if features else [])
        elif kind == "Feature" or (kind is None and "geometry" in item):
            geometry = item.get("geometry")
            if geometry is None:
                continue
            if not isinstance(geometry, dict):
                raise InputError(f"{path}: a feature's geometry is not an object")
            found.append(geometry)
        elif kind in GEOMETRY_TYPES:
            found.append(item)
        else:
            raise InputError(f"{path}: not GeoJSON (object of type {kind!r})")
    return found


def _polygon_parts(geometry: shapely.Geometry, ignored: Counter) -> list[shapely.Polygon]:
    """Non-empty polygons of a geometry (repaired when invalid); counts what is ignored."""
    if isinstance(geometry, shapely.GeometryCollection):
        return [part for sub in geometry.geoms for part in _polygon_parts(sub, ignored)]
    if not isinstance(geometry, (shapely.Polygon, shapely.MultiPolygon)):
        ignored[geometry.geom_type] += 1
        return []
    if not geometry.is_valid:
        repaired = shapely.make_valid(geometry)
        # slivers of the repair (lines, points) are not worth a warning
        return [p for p in _polygon_parts(repaired, Counter()) if p.area > 0]
    return [part for part in getattr(geometry, "geoms", [geometry]) if not part.is_empty and part.area > 0]
