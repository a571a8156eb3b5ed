"""Checker of the QuPath GeoJSON contract (docs/QUPATH_GEOJSON.md), for any test to use:

    from qupath_contract import assert_qupath_valid, validate_qupath_geojson

``validate_qupath_geojson(path_or_obj)`` returns human-readable violations (empty: valid);
``assert_qupath_valid(path_or_obj)`` raises AssertionError listing the first few.
Every feature is checked; ``object_type`` is the objectType expected ("detection" for nuclei,
"cell" for cells, None for either).
"""

from __future__ import annotations

import gzip
import math
import re
import uuid
import zlib
from pathlib import Path
from typing import Any

import shapely
from shapely.validation import explain_validity

from wsi_frgnet.errors import InputError
from wsi_frgnet.io.geojson import GEOJSON_SUFFIXES as SUFFIXES
from wsi_frgnet.io.geojson import load_document, read_features

NON_FINITE_STRINGS = ("NaN", "Infinity", "-Infinity")
GZIP_MAGIC = b"\x1f\x8b"
# A bare NaN / Infinity token where a JSON value starts (inside a string it follows a quote).
_BARE_NON_FINITE = re.compile(r"[:\[,]\s*-?(NaN|Infinity)\b")


def _load(path: Path) -> tuple[Any, list[str]]:
    """(parsed JSON or None, file-level violations)."""
    problems: list[str] = []
    name = path.name.lower()
    if not any(name.endswith(suffix) and len(name) > len(suffix) for suffix in SUFFIXES):
        problems.append(f"{path.name}: suffix is not one of {', '.join(SUFFIXES)}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return None, [f"{path}: cannot read ({exc})"]
    if name.endswith(".gz"):
        if not raw.startswith(GZIP_MAGIC):
            return None, problems + [f"{path.name}: .gz file is not gzip-compressed"]
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            return None, problems + [f"{path.name}: gzip unreadable ({exc})"]
    elif raw.startswith(GZIP_MAGIC):
        return None, problems + [f"{path.name}: gzip-compressed content without a .gz suffix"]
    if raw.startswith(b"\xef\xbb\xbf"):
        problems.append("file starts with a UTF-8 byte order mark")
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, problems + [f"file is not UTF-8 ({exc})"]
    # JSON strings cannot hold raw newlines or tabs: any inside the text is layout whitespace.
    if "\n" in text.rstrip("\n") or "\t" in text:
        problems.append("JSON is not compact (newlines or indentation between tokens)")
    bare = _BARE_NON_FINITE.search(text)
    if bare:
        return None, problems + [f"bare {bare.group(1)} literal in the JSON (write non-finite values as strings)"]
    try:
        return load_document(path), problems  # the project's own reader
    except InputError as exc:
        return None, problems + [str(exc)]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_position(position: Any, where: str) -> list[str]:
    if not isinstance(position, list) or len(position) not in (2, 3) or not all(_is_number(v) for v in position):
        return [f"{where}: position {position!r} is not [x, y] numbers"]
    problems = []
    for value in position[:2]:
        if not math.isfinite(value):
            problems.append(f"{where}: non-finite coordinate {value!r}")
        elif isinstance(value, float) and round(value, 2) != value:
            problems.append(f"{where}: coordinate {value!r} has more than 2 decimals")
    return problems


def _check_ring(ring: Any, where: str) -> tuple[list[str], bool]:
    """(violations, usable for shapely)."""
    if not isinstance(ring, list):
        return [f"{where}: ring is not an array"], False
    problems = []
    for index, position in enumerate(ring):
        problems += _check_position(position, f"{where}[{index}]")
    if problems:
        return problems[:3] + ([f"{where}: ... {len(problems) - 3} more"] if len(problems) > 3 else []), False
    if len(ring) < 4:
        problems.append(f"{where}: ring has {len(ring)} positions (< 4)")
    if ring and ring[0][:2] != ring[-1][:2]:
        problems.append(f"{where}: ring not closed (first {ring[0]} != last {ring[-1]})")
    return problems, not problems


def _check_polygon_coordinates(rings: Any, where: str) -> tuple[list[str], shapely.Polygon | None]:
    if not isinstance(rings, list) or not rings:
        return [f"{where}: Polygon coordinates must be a non-empty array of rings"], None
    problems, usable = [], True
    for index, ring in enumerate(rings):
        ring_problems, ring_usable = _check_ring(ring, f"{where} ring {index}")
        problems += ring_problems
        usable &= ring_usable
    if not usable:
        return problems, None
    shell, *holes = ([tuple(p[:2]) for p in ring] for ring in rings)
    return problems, shapely.Polygon(shell, holes)


def _check_geometry(geometry: Any, where: str) -> list[str]:
    if not isinstance(geometry, dict):
        return [f"{where}: geometry missing or not an object"]
    kind = geometry.get("type")
    coordinates = geometry.get("coordinates")
    if kind == "Polygon":
        problems, shape = _check_polygon_coordinates(coordinates, where)
    elif kind == "MultiPolygon":
        if not isinstance(coordinates, list) or not coordinates:
            return [f"{where}: MultiPolygon coordinates must be a non-empty array of polygons"]
        problems, parts = [], []
        for index, polygon in enumerate(coordinates):
            part_problems, part = _check_polygon_coordinates(polygon, f"{where} polygon {index}")
            problems += part_problems
            parts.append(part)
        shape = None if any(part is None for part in parts) else shapely.MultiPolygon(parts)
    else:
        return [f"{where}: geometry type {kind!r} is not Polygon or MultiPolygon"]
    if shape is not None:
        if not shape.is_valid:
            problems.append(f"{where}: invalid {kind} ({explain_validity(shape)})")
        elif shape.area <= 0:
            problems.append(f"{where}: {kind} has zero area")
    return problems


def _check_classification(classification: Any, where: str) -> list[str]:
    if not isinstance(classification, dict):
        return [f"{where}: classification must be an object with name and color, got {classification!r}"]
    problems = []
    name = classification.get("name")
    if not isinstance(name, str) or not name:
        problems.append(f"{where}: classification name missing or not a non-empty string")
    colour = classification.get("color")
    if not (
        isinstance(colour, list)
        and len(colour) in (3, 4)
        and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in colour)
    ):
        problems.append(f"{where}: classification color must be 3-4 ints 0-255, got {colour!r}")
    return problems


def _check_measurements(measurements: Any, where: str) -> list[str]:
    if not isinstance(measurements, dict):
        return [f"{where}: measurements must be a flat object name → number, got {type(measurements).__name__}"]
    problems = []
    for name, value in measurements.items():
        if not isinstance(name, str) or not name:
            problems.append(f"{where}: measurement name {name!r} is not a non-empty string")
        if isinstance(value, str):
            if value not in NON_FINITE_STRINGS:
                problems.append(f"{where}: measurement {name!r} is the string {value!r} (only NaN/Infinity as strings)")
        elif not _is_number(value):
            problems.append(f"{where}: measurement {name!r} is {type(value).__name__}, not a number")
        elif not math.isfinite(value):
            problems.append(f"{where}: measurement {name!r} is a non-finite number (write it as a string)")
    return problems


def _check_feature(feature: Any, where: str, object_type: str | None) -> list[str]:
    if not isinstance(feature, dict):
        return [f"{where}: not an object"]
    problems = []
    if feature.get("type") != "Feature":
        problems.append(f"{where}: type is {feature.get('type')!r}, not 'Feature'")
    identifier = feature.get("id")
    try:
        if not isinstance(identifier, str) or str(uuid.UUID(identifier)) != identifier.lower():
            raise ValueError
    except ValueError:
        problems.append(f"{where}: id {identifier!r} is not a UUID string")
    problems += _check_geometry(feature.get("geometry"), where)
    properties = feature.get("properties")
    if not isinstance(properties, dict):
        return problems + [f"{where}: properties missing or not an object"]
    if "nucleusGeometry" in feature:
        problems += _check_geometry(feature["nucleusGeometry"], f"{where} nucleusGeometry")
    if "nucleusGeometry" in properties:
        problems.append(f"{where}: nucleusGeometry inside properties (it is a sibling of geometry)")
    if "type" in properties:
        problems.append(f"{where}: 'type' key inside properties (QuPath reads it as objectType)")
    actual = properties.get("objectType")
    if actual != object_type and not (object_type is None and actual in ("detection", "cell")):
        problems.append(f"{where}: objectType is {actual!r}, not {object_type!r}")
    if actual == "cell" and "nucleusGeometry" not in feature:
        problems.append(f"{where}: a cell without nucleusGeometry")
    if "classification" in properties:
        problems += _check_classification(properties["classification"], where)
    else:
        problems.append(f"{where}: classification missing")
    if "measurements" in properties:
        problems += _check_measurements(properties["measurements"], where)
    if "metadata" in properties:
        metadata = properties["metadata"]
        if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            problems.append(f"{where}: metadata must map strings to strings")
    return problems


def validate_qupath_geojson(path_or_obj: Any, object_type: str | None = "detection") -> list[str]:
    """Violations of the QuPath GeoJSON contract in a file (``.gz``: gzip) or a parsed object."""
    if isinstance(path_or_obj, (str, Path)):
        data, problems = _load(Path(path_or_obj))
        if data is None:
            return problems
    else:
        data, problems = path_or_obj, []
    if not isinstance(data, dict) or data.get("type") != "FeatureCollection":
        return problems + ["top level is not a FeatureCollection object"]
    features = data.get("features")
    if not isinstance(features, list):
        return problems + ["FeatureCollection has no 'features' array"]
    seen: dict[str, int] = {}
    for index, feature in enumerate(features):
        where = f"feature {index}"
        problems += _check_feature(feature, where, object_type)
        identifier = feature.get("id") if isinstance(feature, dict) else None
        if isinstance(identifier, str):
            if identifier in seen:
                problems.append(f"{where}: id {identifier} repeats feature {seen[identifier]}")
            else:
                seen[identifier] = index
    return problems


def assert_qupath_valid(path_or_obj: Any, object_type: str | None = "detection", show: int = 5) -> None:
    """AssertionError listing the first ``show`` violations when there are any."""
    problems = validate_qupath_geojson(path_or_obj, object_type)
    if problems:
        listed = "\n  ".join(problems[:show])
        more = f"\n  ... and {len(problems) - show} more" if len(problems) > show else ""
        raise AssertionError(f"{len(problems)} QuPath contract violation(s):\n  {listed}{more}")


def overlapping_pairs(path_or_features: Any, key: str = "geometry", tolerance: float = 1.0) -> list[tuple[int, int, float]]:
    """(i, j, shared area px²) of every pair of features whose ``key`` geometries
    ("geometry", or "nucleusGeometry" of cells) share more than ``tolerance`` px²."""
    features = read_features(path_or_features) if isinstance(path_or_features, (str, Path)) else path_or_features
    polygons = [shapely.geometry.shape(feature[key]) for feature in features]
    tree = shapely.STRtree(polygons)
    first, second = tree.query(polygons, predicate="intersects")
    pairs = []
    for i, j in zip(first.tolist(), second.tolist()):
        if i < j:
            shared = polygons[i].intersection(polygons[j]).area
            if shared > tolerance:
                pairs.append((i, j, shared))
    return pairs
