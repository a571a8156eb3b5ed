"""QuPath GeoJSON export: the contract (docs/QUPATH_GEOJSON.md) on every feature, measurements,
offsets, ids, gzip, atomicity, repair after rounding and fidelity to the mask."""

from __future__ import annotations

import copy
import gzip
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import shapely
from qupath_contract import assert_qupath_valid, validate_qupath_geojson

from wsi_frgnet.engine import export
from wsi_frgnet.engine.export import ExportSettings, write_geojson
from wsi_frgnet.errors import InputError
from wsi_frgnet.geometry.outlines import trace_outline
from wsi_frgnet.io.geojson import read_features
from wsi_frgnet.nucleus import Nucleus

SETTINGS = ExportSettings(microns_per_pixel=0.25, slide_id="slide.svs:1000x800")


def nucleus_feature(nucleus: Nucleus, settings: ExportSettings) -> dict | None:
    """The feature ``write_geojson`` writes for one nucleus (None when it skips it)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "one.geojson"
        write_geojson(path, [nucleus], settings)
        features = read_features(path)
    return features[0] if features else None


def closed(points) -> np.ndarray:
    ring = np.asarray(points, dtype=np.float64)
    return np.vstack([ring, ring[:1]])


def square(x: float, y: float, side: float) -> np.ndarray:
    return closed([(x, y), (x + side, y), (x + side, y + side), (x, y + side)])


def disc_polygon(cx: float, cy: float, radius: float, vertices: int = 32) -> np.ndarray:
    angles = np.linspace(0.0, 2.0 * np.pi, vertices, endpoint=False)
    return closed(np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1))


def hand_made_nuclei() -> list[Nucleus]:
    return [
        Nucleus(square(10.0, 20.0, 8.0), score=0.93, guide=0.71),
        Nucleus(disc_polygon(100.123456, 200.987654, 6.3), score=0.5, guide=float("nan")),
        Nucleus(disc_polygon(300.5, 40.25, 11.0, vertices=33), score=np.float32(0.812345678), guide=np.float64(0.2)),
        Nucleus(closed([(50.0, 50.0), (60.0, 52.0), (55.0, 61.5)]), score=1.0, guide=0.0),
    ]


def collection(features: list[dict]) -> dict:
    return {"type": "FeatureCollection", "features": features}


def valid_collection() -> dict:
    return collection([nucleus_feature(n, SETTINGS) for n in hand_made_nuclei()])


# --------------------------------------------------------------------------------------------
# The contract on our own output


@pytest.mark.parametrize("name", ["cells.geojson", "cells.json", "cells.geojson.gz", "cells.json.gz"])
def test_written_features_pass_the_contract(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    count = write_geojson(path, iter(hand_made_nuclei()), SETTINGS)
    assert count == 4
    assert_qupath_valid(path)
    features = read_features(path)
    assert len(features) == 4
    first = features[0]
    assert list(first) == ["type", "id", "geometry", "properties"]
    assert first["properties"] == {
        "objectType": "detection",
        "classification": {"name": "Nucleus", "color": list(export.DEFAULT_COLOUR)},
        "measurements": {"Detection probability": 0.93, "Guide value": 0.71},
    }
    for feature in features:
        assert "type" not in feature["properties"]
    assert "Guide value" not in features[1]["properties"]["measurements"]  # NaN guide: omitted
    assert features[2]["properties"]["measurements"]["Detection probability"] == 0.8123


def test_output_is_compact_utf8(tmp_path: Path) -> None:
    path = tmp_path / "cells.geojson"
    write_geojson(path, [Nucleus(square(1.0, 1.0, 5.0), 0.9, 0.5, measurements={"Area µm^2": 1.0}), *hand_made_nuclei()], SETTINGS)
    raw = path.read_bytes()
    assert raw.startswith(b'{"type":"FeatureCollection","features":[{"type":"Feature","id":"')
    assert raw.endswith(b"]}")
    assert b"\n" not in raw and b", " not in raw and b'": ' not in raw
    assert "Area µm^2".encode() in raw  # raw UTF-8 micro sign, not \u00b5
    assert raw == json.dumps(json.loads(raw), ensure_ascii=False, separators=(",", ":")).encode()


def test_empty_input_writes_an_empty_collection(tmp_path: Path) -> None:
    path = tmp_path / "none.geojson"
    assert write_geojson(path, iter(()), SETTINGS) == 0
    assert path.read_bytes() == b'{"type":"FeatureCollection","features":[]}'
    assert_qupath_valid(path)


def test_non_finite_measurements_are_strings() -> None:
    feature = nucleus_feature(Nucleus(square(0, 0, 5), score=float("nan"), guide=float("inf")), SETTINGS)
    measurements = feature["properties"]["measurements"]
    assert measurements["Detection probability"] == "NaN"
    assert measurements["Guide value"] == "Infinity"
    assert validate_qupath_geojson(collection([feature])) == []


# --------------------------------------------------------------------------------------------
# The validator catches each rule broken on purpose


def _set(path: str, value):
    def mutate(data: dict) -> None:
        *parents, last = path.split(".")
        target = data
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value

    return mutate


def _delete(path: str):
    def mutate(data: dict) -> None:
        *parents, last = path.split(".")
        target = data
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        del target[last]

    return mutate


def _ring(data: dict) -> list:
    return data["features"][0]["geometry"]["coordinates"][0]


BROKEN = {
    "not a FeatureCollection": (_set("type", "GeometryCollection"), "FeatureCollection"),
    "no features array": (_delete("features"), "features"),
    "feature type": (_set("features.0.type", "Polygon"), "not 'Feature'"),
    "id not a UUID": (_set("features.0.id", "nucleus-1"), "not a UUID"),
    "id missing": (_delete("features.0.id"), "not a UUID"),
    "id an int": (_set("features.0.id", 7), "not a UUID"),
    "ids repeat": (lambda d: d["features"][1].update(id=d["features"][0]["id"]), "repeats feature 0"),
    "geometry missing": (_delete("features.0.geometry"), "geometry missing"),
    "geometry a Point": (_set("features.0.geometry", {"type": "Point", "coordinates": [1.0, 2.0]}), "not Polygon"),
    "ring not closed": (lambda d: _ring(d).pop(), "not closed"),
    "ring too short": (_set("features.0.geometry.coordinates", [[[0, 0], [1, 1], [0, 0]]]), "< 4"),
    "self-intersecting": (
        _set("features.0.geometry.coordinates", [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]),
        "invalid Polygon",
    ),
    "zero area": (_set("features.0.geometry.coordinates", [[[0, 0], [5, 0], [10, 0], [0, 0]]]), "invalid Polygon"),
    "three decimals": (lambda d: _ring(d)[1].__setitem__(0, 12.345), "more than 2 decimals"),
    "non-finite coordinate": (lambda d: _ring(d)[1].__setitem__(1, float("nan")), "non-finite coordinate"),
    "position not a pair": (lambda d: _ring(d).__setitem__(1, [1.0]), "not [x, y]"),
    "invalid MultiPolygon": (
        _set(
            "features.0.geometry",
            {"type": "MultiPolygon", "coordinates": [[[[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]]], [[[2, 2], [6, 2], [6, 6], [2, 6], [2, 2]]]]},
        ),
        "invalid MultiPolygon",
    ),
    "properties missing": (_delete("features.0.properties"), "properties missing"),
    "objectType annotation": (_set("features.0.properties.objectType", "annotation"), "objectType"),
    "objectType missing": (_delete("features.0.properties.objectType"), "objectType"),
    "type in properties": (_set("features.0.properties.type", "detection"), "'type' key inside properties"),
    "classification missing": (_delete("features.0.properties.classification"), "classification missing"),
    "classification a string": (_set("features.0.properties.classification", "Nucleus"), "classification must be an object"),
    "classification without color": (_delete("features.0.properties.classification.color"), "color"),
    "classification without name": (_delete("features.0.properties.classification.name"), "name"),
    "color out of range": (_set("features.0.properties.classification.color", [256, 0, 0]), "color"),
    "color floats": (_set("features.0.properties.classification.color", [1.0, 2.0, 3.0]), "color"),
    "color two values": (_set("features.0.properties.classification.color", [1, 2]), "color"),
    "measurements a list": (
        _set("features.0.properties.measurements", [{"name": "Area", "value": 1.0}]),
        "flat object",
    ),
    "measurement nested": (_set("features.0.properties.measurements.Area", {"value": 1.0}), "not a number"),
    "measurement text": (_set("features.0.properties.measurements.Area", "large"), "only NaN/Infinity"),
    "measurement NaN number": (_set("features.0.properties.measurements.Area", float("nan")), "non-finite number"),
    "measurement boolean": (_set("features.0.properties.measurements.Area", True), "not a number"),
    "metadata non-string": (_set("features.0.properties.metadata", {"tile": 3}), "metadata"),
    "nucleusGeometry in properties": (
        _set("features.0.properties.nucleusGeometry", {"type": "Polygon", "coordinates": []}),
        "sibling",
    ),
}


@pytest.mark.parametrize("rule", sorted(BROKEN))
def test_validator_catches_each_broken_rule(rule: str) -> None:
    data = valid_collection()
    assert validate_qupath_geojson(copy.deepcopy(data)) == []
    mutate, expected = BROKEN[rule]
    mutate(data)
    problems = validate_qupath_geojson(data)
    assert problems, rule
    assert any(expected in problem for problem in problems), problems


def _write_text(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


FILE_RULES = {
    "bare NaN literal": ("x.geojson", lambda t: t.replace('"Detection probability":0.93', '"Detection probability":NaN'), "NaN literal"),
    "not compact": ("x.geojson", lambda t: json.dumps(json.loads(t), indent=2, ensure_ascii=False), "not compact"),
    "unknown suffix": ("x.txt", lambda t: t, "suffix"),
    "gz suffix, plain content": ("x.geojson.gz", lambda t: t, "not gzip-compressed"),
    "not JSON": ("x.geojson", lambda t: t[:-2], "not valid JSON"),
}


@pytest.mark.parametrize("rule", sorted(FILE_RULES))
def test_validator_catches_file_level_violations(tmp_path: Path, rule: str) -> None:
    name, change, expected = FILE_RULES[rule]
    text = json.dumps(valid_collection(), ensure_ascii=False, separators=(",", ":"))
    path = _write_text(tmp_path / name, change(text))
    problems = validate_qupath_geojson(path)
    assert any(expected in problem for problem in problems), problems
    with pytest.raises(AssertionError, match="QuPath contract violation"):
        assert_qupath_valid(path)


def test_validator_file_level_encodings(tmp_path: Path) -> None:
    micro = nucleus_feature(Nucleus(square(1.0, 1.0, 5.0), 0.9, 0.5, measurements={"Area µm^2": 1.0}), SETTINGS)
    text = json.dumps(collection([*valid_collection()["features"], micro]), ensure_ascii=False, separators=(",", ":"))
    latin = tmp_path / "latin.geojson"
    latin.write_bytes(text.encode("latin-1"))
    assert any("not UTF-8" in p for p in validate_qupath_geojson(latin))
    truncated = tmp_path / "cut.geojson.gz"
    truncated.write_bytes(gzip.compress(text.encode())[:-20])
    assert any("gzip unreadable" in p for p in validate_qupath_geojson(truncated))
    hidden = tmp_path / "hidden.geojson"
    hidden.write_bytes(gzip.compress(text.encode()))
    assert any("without a .gz suffix" in p for p in validate_qupath_geojson(hidden))
    good = tmp_path / "good.json.gz"
    good.write_bytes(gzip.compress(text.encode()))
    assert validate_qupath_geojson(good) == []


# --------------------------------------------------------------------------------------------
# Measurements, offsets, ids


def test_the_measurements_a_nucleus_carries_are_written_after_probability_and_guide() -> None:
    measured = {"Area µm^2": 9.123456, "Circularity": 0.9, "Hematoxylin: Mean": float("nan")}
    feature = nucleus_feature(Nucleus(square(3.0, 4.0, 12.0), 0.9, 0.5, measurements=measured), SETTINGS)
    measurements = feature["properties"]["measurements"]
    assert list(measurements) == ["Detection probability", "Guide value", "Area µm^2", "Circularity", "Hematoxylin: Mean"]
    assert measurements["Area µm^2"] == 9.1235 and measurements["Hematoxylin: Mean"] == "NaN"


def test_a_nucleus_with_a_cell_is_written_as_a_qupath_cell(tmp_path: Path) -> None:
    nucleus = Nucleus(square(10.0, 10.0, 6.0), 0.9, 0.5, cell=square(6.0, 6.0, 14.0), measurements={"Cell: Area µm^2": 12.25})
    path = tmp_path / "cells.geojson"
    assert write_geojson(path, [nucleus, hand_made_nuclei()[0]], SETTINGS) == 2
    assert_qupath_valid(path, object_type=None)
    cell, detection = read_features(path)
    assert cell["properties"]["objectType"] == "cell" and detection["properties"]["objectType"] == "detection"
    assert list(cell) == ["type", "id", "geometry", "nucleusGeometry", "properties"]
    assert shapely.geometry.shape(cell["geometry"]).area == pytest.approx(196.0)
    assert shapely.geometry.shape(cell["nucleusGeometry"]).area == pytest.approx(36.0)
    assert cell["id"] == nucleus_feature(Nucleus(square(10.0, 10.0, 6.0), 0.9, 0.5), SETTINGS)["id"]  # the nucleus names it


def test_the_table_has_one_row_per_feature(tmp_path: Path) -> None:
    import csv

    nuclei = [Nucleus(square(10.0 + 20 * i, 20.0, 8.0), 0.9, 0.5, measurements={"Area µm^2": 4.0, "Circularity": 0.785})
              for i in range(3)]
    path, table = tmp_path / "nuclei.geojson", tmp_path / "nuclei.csv"
    settings = ExportSettings(microns_per_pixel=0.5, offset=(2.0, 0.0), slide_id="s")
    assert write_geojson(path, nuclei, settings, table=table) == 3
    rows = list(csv.DictReader(table.open(encoding="utf-8")))
    assert [row["Object ID"] for row in rows] == [feature["id"] for feature in read_features(path)]
    assert rows[0]["Object type"] == "detection"
    assert float(rows[1]["Centroid X px"]) == pytest.approx(32.0) and float(rows[1]["Centroid Y px"]) == pytest.approx(24.0)
    assert float(rows[1]["Centroid X µm"]) == pytest.approx(16.0) and float(rows[1]["Centroid Y µm"]) == pytest.approx(12.0)
    assert rows[2]["Area µm^2"] == "4" and rows[2]["Detection probability"] == "0.9" and rows[2]["Circularity"] == "0.785"


def test_offset_is_subtracted_from_every_coordinate() -> None:
    nucleus = Nucleus(disc_polygon(1500.0, 2300.0, 7.0), 0.8, 0.3)
    plain = nucleus_feature(nucleus, ExportSettings(microns_per_pixel=0.25))
    shifted = nucleus_feature(nucleus, ExportSettings(microns_per_pixel=0.25, offset=(1000.0, 2000.0)))
    a = np.asarray(plain["geometry"]["coordinates"][0])
    b = np.asarray(shifted["geometry"]["coordinates"][0])
    np.testing.assert_allclose(a - b, np.broadcast_to([1000.0, 2000.0], a.shape), atol=1e-9)
    assert plain["properties"]["measurements"] == shifted["properties"]["measurements"]


def test_coordinates_rounded_to_two_decimals_and_closed() -> None:
    feature = nucleus_feature(Nucleus(disc_polygon(100.123456, 200.987654, 6.3), 0.5, 0.5), SETTINGS)
    ring = feature["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and len(ring) == 33
    assert all(round(v, 2) == v for point in ring for v in point)
    assert all(len(repr(v).split(".")[1]) <= 2 for point in ring for v in point)


def test_ids_are_deterministic_and_distinct(tmp_path: Path) -> None:
    first, second = tmp_path / "a.geojson", tmp_path / "b.geojson"
    write_geojson(first, hand_made_nuclei(), SETTINGS)
    write_geojson(second, hand_made_nuclei(), SETTINGS)
    assert first.read_bytes() == second.read_bytes()
    ids = [f["id"] for f in read_features(first)]
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 5 for i in ids)
    other_slide = nucleus_feature(hand_made_nuclei()[0], ExportSettings(0.25, slide_id="other.svs:1000x800"))
    assert other_slide["id"] != ids[0]
    moved = nucleus_feature(Nucleus(square(10.01, 20.0, 8.0), 0.93, 0.71), SETTINGS)
    assert moved["id"] != ids[0]
    # the id depends on the polygon only, not on score or guide
    rescored = nucleus_feature(Nucleus(square(10.0, 20.0, 8.0), 0.1, 0.2), SETTINGS)
    assert rescored["id"] == ids[0]


def test_repeated_polygons_are_written_once(tmp_path: Path) -> None:
    path = tmp_path / "twice.geojson"
    nucleus = hand_made_nuclei()[0]
    assert write_geojson(path, [nucleus, nucleus, hand_made_nuclei()[1]], SETTINGS) == 2
    assert_qupath_valid(path)


def test_settings_are_checked() -> None:
    with pytest.raises(InputError, match="microns per pixel"):
        ExportSettings(microns_per_pixel=0.0)
    with pytest.raises(InputError, match="colour"):
        ExportSettings(microns_per_pixel=0.25, colour=(300, 0, 0))


# --------------------------------------------------------------------------------------------
# Files: gzip, atomicity, suffixes, streaming


def test_gzip_output_equals_plain_output(tmp_path: Path) -> None:
    plain, zipped = tmp_path / "cells.geojson", tmp_path / "cells.geojson.gz"
    assert write_geojson(plain, hand_made_nuclei(), SETTINGS) == 4
    assert write_geojson(zipped, hand_made_nuclei(), SETTINGS) == 4
    assert zipped.read_bytes()[:2] == b"\x1f\x8b"
    assert gzip.decompress(zipped.read_bytes()) == plain.read_bytes()
    assert read_features(zipped) == read_features(plain)
    assert b".tmp" not in zipped.read_bytes()[:64]  # gzip header names the output, not the temp file


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("name", ["cells.geojson", "cells.geojson.gz"])
def test_failure_mid_stream_leaves_no_file(tmp_path: Path, error: type[BaseException], name: str) -> None:
    def nuclei():
        yield from hand_made_nuclei() * 2000  # several batches reach the file first
        raise error("producer failed")

    existing = tmp_path / "old.geojson"
    existing.write_bytes(b"previous")
    with pytest.raises(error, match="producer failed"):
        write_geojson(tmp_path / name, nuclei(), SETTINGS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.geojson"]
    with pytest.raises(error):
        write_geojson(existing, nuclei(), SETTINGS)
    assert existing.read_bytes() == b"previous"  # replaced only on success
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.geojson"]


def test_features_are_streamed_not_collected(tmp_path: Path) -> None:
    seen_sizes = []

    def nuclei():
        for index in range(6000):
            if index == 5000:
                temp_files = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
                seen_sizes.extend(p.stat().st_size for p in temp_files)
            yield Nucleus(square(index * 20.0, 0.0, 10.0), 0.9, 0.5)

    assert write_geojson(tmp_path / "many.geojson", nuclei(), SETTINGS) == 6000
    assert len(seen_sizes) == 1 and seen_sizes[0] > 500_000  # thousands of features already on disk


@pytest.mark.parametrize("name", ["cells.txt", "cells.gz", "cells.geojson.bz2", "cells.json.zip", "geojson", "cells"])
def test_unknown_suffix_is_an_input_error(tmp_path: Path, name: str) -> None:
    consumed = []

    def nuclei():
        consumed.append(True)
        yield from hand_made_nuclei()

    path = tmp_path / name
    with pytest.raises(InputError, match=name.replace(".", r"\.")):
        write_geojson(path, nuclei(), SETTINGS)
    assert not consumed and list(tmp_path.iterdir()) == []


def test_missing_folder_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        write_geojson(tmp_path / "missing" / "cells.geojson", hand_made_nuclei(), SETTINGS)


def test_special_values_are_written_as_qupath_reads_them(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    nuclei = [
        Nucleus(disc_polygon(*rng.uniform(0, 90000, 2), rng.uniform(3, 15), 32), float(rng.uniform()), float(g))
        for g in rng.choice([np.nan, 0.25, np.inf, 1e-7, 0.123456789], size=300)
    ]
    nuclei.append(Nucleus(square(-0.001, -0.004, 6.0), float("nan"), 1e-5))  # -0.0 after rounding, tiny values
    settings = ExportSettings(microns_per_pixel=0.2527, offset=(17.333, 3.0), slide_id="µ slide")
    path = tmp_path / "special.geojson"
    assert write_geojson(path, nuclei, settings) == 301
    data = path.read_bytes()
    assert b"-0.0," not in data and b"NaN," not in data.replace(b'"NaN"', b"")
    guides = [f["properties"]["measurements"].get("Guide value") for f in read_features(path)]
    assert "Infinity" in guides and 0.25 in guides and None in guides  # NaN guide: omitted
    assert_qupath_valid(path)


# --------------------------------------------------------------------------------------------
# Rounding repairs, geometry fidelity


def test_polygon_invalid_after_rounding_is_repaired() -> None:
    # A notch whose tip lies 0.004 px above the bottom edge: valid, but it touches the edge at
    # 0.01 px precision (self-touching ring).
    notch = closed([(0.0, 0.0), (10.0, 0.0), (10.0, 10.0), (5.0, 0.004), (0.0, 10.0)])
    assert shapely.Polygon(notch).is_valid
    rounded = shapely.Polygon(np.round(notch, 2))
    assert not rounded.is_valid
    feature = nucleus_feature(Nucleus(notch, 0.9, 0.5), ExportSettings(microns_per_pixel=None))
    assert feature is not None
    assert validate_qupath_geojson(collection([feature])) == []
    repaired = shapely.Polygon(feature["geometry"]["coordinates"][0])
    assert repaired.area == pytest.approx(25.0, abs=0.1)  # the larger of the two triangles-with-legs


def test_polygons_degenerate_after_rounding_are_skipped(tmp_path: Path) -> None:
    speck = closed([(5.0, 5.0), (5.001, 5.0), (5.0, 5.001)])  # one point after rounding
    sliver = closed([(0.0, 0.0), (10.0, 0.001), (20.0, 0.0)])  # collinear after rounding
    repeats = closed([(0.0, 0.0), (0.001, 0.0), (3.0, 0.0), (3.0, 3.0), (3.001, 3.0), (0.0, 3.0)])
    for polygon in (speck, sliver):
        assert nucleus_feature(Nucleus(polygon, 0.9, 0.5), SETTINGS) is None
    repeat_feature = nucleus_feature(Nucleus(repeats, 0.9, 0.5), SETTINGS)
    assert repeat_feature["geometry"]["coordinates"][0] == [[0.0, 0.0], [3.0, 0.0], [3.0, 3.0], [0.0, 3.0], [0.0, 0.0]]
    path = tmp_path / "mixed.geojson"
    nuclei = [Nucleus(speck, 0.9, 0.5), hand_made_nuclei()[0], Nucleus(sliver, 0.9, 0.5), Nucleus(repeats, 0.9, 0.5)]
    assert write_geojson(path, nuclei, SETTINGS) == 2
    assert_qupath_valid(path)


def rasterise_half_covered(polygon: shapely.Polygon, shape: tuple[int, int]) -> np.ndarray:
    """Pixels (row, col) covering [c, c+1) x [r, r+1) that are at least half inside ``polygon``."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    pixels = shapely.box(cols.ravel(), rows.ravel(), cols.ravel() + 1.0, rows.ravel() + 1.0)
    covered = shapely.area(shapely.intersection(polygon, pixels))
    return (covered >= 0.5).reshape(shape)


@pytest.mark.parametrize("radius", [5.5, 12.0])
def test_exported_polygon_reproduces_its_mask(radius: float) -> None:
    height, width = 40, 44
    yy, xx = np.mgrid[:height, :width]
    mask = (xx + 0.5 - 21.3) ** 2 + (yy + 0.5 - 19.7) ** 2 <= radius**2
    offset = (1000.0, 2000.0)  # tile origin in the slide; exported in slide coordinates minus offset
    outline = trace_outline(mask) + np.asarray(offset)
    polygon = np.vstack([outline, outline[:1]])
    feature = nucleus_feature(Nucleus(polygon, 0.9, 0.5), ExportSettings(microns_per_pixel=0.5, offset=offset))
    assert validate_qupath_geojson(collection([feature])) == []
    exported = shapely.Polygon(feature["geometry"]["coordinates"][0])
    raster = rasterise_half_covered(exported, mask.shape)
    iou = (raster & mask).sum() / (raster | mask).sum()
    assert iou >= 0.97
    assert exported.area == pytest.approx(mask.sum(), rel=0.03)  # encloses its mask by area
