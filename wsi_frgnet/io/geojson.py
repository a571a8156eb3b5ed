"""Reading QuPath GeoJSON: the one reader of the project, for features and for polygons.

Accepts a FeatureCollection, a single Feature, a JSON list of features (QuPath's older export)
or a bare geometry, plain or gzip-compressed (recognised by content), with or without a UTF-8
byte-order mark. Coordinates are returned as written (px). docs/QUPATH_GEOJSON.md says what
QuPath writes and reads.

:func:`read_nuclei_and_regions` also tells reviewed regions from nuclei by QuPath's object
types: a QuPath *annotation* object is a region when it is classified ``Region*`` (QuPath's
class for regions) or holds the centre of another, less than half as large, object of the
file (QuPath makes it their parent); every other polygon (detections, the nuclei of cells, annotations drawn
around single nuclei, also over a detection of the same nucleus, plain GeoJSON) is a nucleus.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import shapely
from shapely.geometry import shape

from wsi_frgnet.errors import InputError

logger = logging.getLogger(__name__)

GEOMETRY_TYPES = frozenset(
    {"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon", "GeometryCollection"}
)
REGION_CLASS = "Region*"  # QuPath's built-in class for regions of interest
GEOJSON_SUFFIXES = (".geojson", ".json", ".geojson.gz", ".json.gz")
"""Names of GeoJSON files, everywhere (lower case; matched case-insensitively); .gz: gzip."""


def geojson_suffix(path: Path) -> str | None:
    """The one of ``GEOJSON_SUFFIXES`` that ends ``path``'s name (any case), or None."""
    name = Path(path).name.lower()
    found = [suffix for suffix in GEOJSON_SUFFIXES if name.endswith(suffix) and len(name) > len(suffix)]
    return max(found, key=len) if found else None


def is_geojson(path: Path) -> bool:
    """Whether ``path`` is named like a GeoJSON file (``GEOJSON_SUFFIXES``)."""
    return geojson_suffix(path) is not None


def load_document(path: Path) -> object:
    """The parsed JSON of a GeoJSON file (gzip and a byte-order mark allowed); InputError for a
    missing or unreadable file and for invalid JSON."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        return orjson.loads(raw[3:] if raw[:3] == b"\xef\xbb\xbf" else raw)
    except orjson.JSONDecodeError as error:
        raise InputError(f"{path}: not valid JSON ({error.msg} at line {error.lineno} column {error.colno})") from None
    except (OSError, EOFError, zlib.error) as error:
        raise InputError(f"{path}: cannot read ({' '.join(str(error).split())})") from None


def read_features(path: Path) -> list[dict]:
    """Every feature of a GeoJSON file, in file order: those of a FeatureCollection (nested ones
    too), a single Feature, or a list of them; a bare geometry comes as a feature without
    properties. InputError when the file is missing, unreadable or not GeoJSON."""
    path = Path(path)
    return _features(load_document(path), path)


def _features(document: object, path: Path) -> list[dict]:
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
            found.extend(_features(features, path) if features else [])
        elif kind == "Feature" or (kind is None and "geometry" in item):
            found.append(item)
        elif kind in GEOMETRY_TYPES:
            found.append({"type": "Feature", "geometry": item})
        else:
            raise InputError(f"{path}: not GeoJSON (object of type {kind!r})")
    return found


@dataclass(frozen=True)
class _Feature:
    """The polygons of one GeoJSON feature (or bare geometry) and what QuPath made of it."""

    polygons: list[shapely.Polygon]
    is_annotation: bool  # a QuPath annotation object (not a detection or cell)
    class_name: str | None  # QuPath classification name, if any


def read_polygons(path: Path, noun: str, nuclei: bool = False) -> list[shapely.Polygon]:
    """Every polygon of a GeoJSON file, in file order: one per Polygon, one per part of a
    MultiPolygon (also inside GeometryCollections), repaired when invalid. Other geometry types
    are skipped with a warning. ``noun`` names what the polygons are, for messages. ``nuclei``:
    of a QuPath cell object, read its nucleus (``nucleusGeometry``), not the whole cell.

    Raises InputError for a missing or unreadable file, invalid JSON or GeoJSON, a malformed
    geometry, or a file without any polygon.
    """
    return [polygon for feature in _read_features(path, noun, nuclei) for polygon in feature.polygons]


def read_nuclei_and_regions(path: Path) -> tuple[list[shapely.Polygon], list[shapely.Polygon]]:
    """(nuclei, reviewed regions) of a QuPath GeoJSON export, each in file order, coordinates as
    written (px); the module docstring says which polygons are regions. Errors as
    :func:`read_polygons`."""
    features = _read_features(path, "nucleus or region", nuclei=True)
    polygons = [polygon for feature in features for polygon in feature.polygons]
    owners = np.array([index for index, feature in enumerate(features) for _ in feature.polygons], dtype=np.int64)
    areas = shapely.area(np.asarray(polygons, dtype=object))
    centres = shapely.STRtree([polygon.representative_point() for polygon in polygons])
    nuclei: list[shapely.Polygon] = []
    regions: list[shapely.Polygon] = []
    for index, feature in enumerate(features):
        held = centres.query(feature.polygons, predicate="contains")[1]
        smaller = areas[held] < 0.5 * sum(polygon.area for polygon in feature.polygons)
        is_region = feature.is_annotation and (
            feature.class_name == REGION_CLASS or bool(((owners[held] != index) & smaller).any())
        )
        (regions if is_region else nuclei).extend(feature.polygons)
    return nuclei, regions


def _read_features(path: Path, noun: str, nuclei: bool = False) -> list[_Feature]:
    """The features of a GeoJSON file with their polygons (see :func:`read_polygons`)."""
    path = Path(path)
    ignored: Counter[str] = Counter()
    features: list[_Feature] = []
    for feature in read_features(path):
        geometry = feature.get("geometry")
        if geometry is None:
            continue
        if not isinstance(geometry, dict):
            raise InputError(f"{path}: a feature's geometry is not an object")
        if nuclei and isinstance(feature.get("nucleusGeometry"), dict):
            geometry = feature["nucleusGeometry"]  # a QuPath cell: its nucleus, not the whole cell
        try:
            parsed = shape(geometry)
        except Exception as error:  # noqa: BLE001 (shapely raises several types for malformed coordinates)
            raise InputError(f"{path}: malformed {geometry.get('type')} geometry ({' '.join(str(error).split())})") from None
        polygons = _polygon_parts(parsed, ignored)
        if polygons:
            features.append(_Feature(polygons, _is_annotation(feature), _class_name(feature)))
    if ignored:
        logger.warning(
            "%s: ignored %s (only Polygon and MultiPolygon features are read as %s polygons)",
            path, ", ".join(f"{count} {name}" for name, count in sorted(ignored.items())), noun,
        )
    if not features:
        raise InputError(f"{path}: no Polygon or MultiPolygon {noun} found")
    return features


def _is_annotation(feature: dict) -> bool:
    """Whether a feature is a QuPath annotation object (``objectType``, or the older ``id``)."""
    properties = feature.get("properties")
    object_type = properties.get("objectType") if isinstance(properties, dict) else None
    return object_type == "annotation" or (object_type is None and feature.get("id") == "PathAnnotationObject")


def _class_name(feature: dict) -> str | None:
    """A feature's QuPath classification name, or None."""
    properties = feature.get("properties")
    classification = properties.get("classification") if isinstance(properties, dict) else None
    name = classification.get("name") if isinstance(classification, dict) else None
    return name if isinstance(name, str) else None


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
