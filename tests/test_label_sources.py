"""Label sources of a training folder: QuPath GeoJSON label files and unknown-region masks."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import raises_one_line_error as _raises
from PIL import Image
from scipy import ndimage

from wsi_frgnet.config import ModelConfig, TargetConfig
from wsi_frgnet.eval.metrics import score_instances
from wsi_frgnet.geometry.outlines import trace_outline
from wsi_frgnet.io.data_folder import (
    LabelledImage,
    geojson_label_map,
    list_labelled_images,
    load_pair,
    load_unknown,
)
from wsi_frgnet.synthetic import synthetic_nuclei
from wsi_frgnet.train.augment import dihedral
from wsi_frgnet.train.crops import LabelledArray, RandomCrops

HEIGHT, WIDTH = 96, 128
SIDE = 128  # square images for crops equal to the image


def _ring(mask: np.ndarray, shift: tuple[float, float] = (0.0, 0.0)) -> list[list[float]]:
    """Closed GeoJSON ring of a mask's outline (image px), optionally shifted by (dx, dy)."""
    outline = trace_outline(mask) + np.asarray(shift)
    return np.vstack([outline, outline[:1]]).tolist()


def _feature(geometry: dict, object_type: str = "detection") -> dict:
    """A feature as QuPath exports it."""
    return {
        "type": "Feature",
        "id": "6a1c6a53-1c1e-4f0e-8d65-000000000000",
        "geometry": geometry,
        "properties": {
            "objectType": object_type,
            "classification": {"name": "Tumor", "color": [200, 0, 0]},
            "isLocked": False,
        },
    }


def _collection(labels: np.ndarray, shift: tuple[float, float] = (0.0, 0.0)) -> dict:
    """FeatureCollection of every nucleus of ``labels``: Polygons (alternately annotations and
    detections), the last two nuclei as one MultiPolygon, and a Point that must be ignored."""
    ids = [i for i in np.unique(labels) if i > 0]
    features = [
        _feature({"type": "Polygon", "coordinates": [_ring(labels == i, shift)]}, ("annotation", "detection")[k % 2])
        for k, i in enumerate(ids[:-2])
    ]
    features.append(
        _feature({"type": "MultiPolygon", "coordinates": [[_ring(labels == i, shift)] for i in ids[-2:]]})
    )
    features.append(_feature({"type": "Point", "coordinates": [3.5, 4.5]}, "annotation"))
    return {"type": "FeatureCollection", "features": features}


def _assert_same_instances(truth: np.ndarray, found: np.ndarray) -> None:
    assert found.dtype == np.int32 and found.shape == truth.shape
    np.testing.assert_array_equal(found > 0, truth > 0)
    scores = score_instances(truth, found)
    assert scores.pq == 1.0
    assert scores.true_positives == len(np.unique(truth)) - 1


@pytest.fixture
def sample() -> tuple[np.ndarray, np.ndarray]:
    rgb, labels = synthetic_nuclei(HEIGHT, WIDTH, seed=11)
    assert labels.max() >= 6
    return rgb, labels


def _folder(root: Path, rgb: np.ndarray, label_name: str, document: object | bytes | str) -> Path:
    """DATA_DIR with images/a.png and labels/<label_name> holding ``document``."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.fromarray(rgb).save(root / "images" / "a.png")
    path = root / "labels" / label_name
    if isinstance(document, bytes):
        data = document
    elif isinstance(document, str):
        data = document.encode()
    else:
        data = json.dumps(document).encode()
    path.write_bytes(gzip.compress(data) if label_name.endswith(".gz") else data)
    return root


# ----------------------------------------------------------------------------- GeoJSON labels


def test_geojson_label_map_equals_the_traced_label_map(tmp_path: Path, sample) -> None:
    _, labels = sample
    path = tmp_path / "a.geojson"
    path.write_text(json.dumps(_collection(labels)))
    _assert_same_instances(labels, geojson_label_map(path, labels.shape))


@pytest.mark.parametrize("label_name", ["a.geojson", "a.json", "a.geojson.gz", "a.GeoJSON"])
def test_load_pair_reads_geojson_labels_found_by_discovery(tmp_path: Path, sample, label_name: str) -> None:
    rgb, labels = sample
    root = _folder(tmp_path / "data", rgb, label_name, _collection(labels))
    (item,) = list_labelled_images(root)
    assert item.label_path == root / "labels" / label_name
    assert item.unknown_path is None
    loaded_rgb, loaded = load_pair(item)
    np.testing.assert_array_equal(loaded_rgb, rgb)
    _assert_same_instances(labels, loaded)


def test_geojson_features_list_and_file_order_wins_overlaps(tmp_path: Path) -> None:
    square = lambda x0, y0, x1, y1: {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}
    path = tmp_path / "b.geojson"
    # QuPath's older export: a bare list of features. The second square overlaps the first;
    # the third lies partly outside the image and is clipped.
    path.write_text(json.dumps([_feature(square(2, 2, 8, 8)), _feature(square(5, 5, 12, 12)), _feature(square(14, -3, 30, 6))]))
    labels = geojson_label_map(path, (10, 16))
    expected = np.zeros((10, 16), dtype=np.int32)
    expected[5:10, 5:12] = 2
    expected[2:8, 2:8] = 1
    expected[0:6, 14:16] = 3
    np.testing.assert_array_equal(labels, expected)


def test_qupath_cells_are_read_as_their_nuclei(tmp_path: Path) -> None:
    square = lambda x0, y0, x1, y1: {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}
    cell = _feature(square(0, 0, 12, 10), "cell")
    cell["nucleusGeometry"] = square(3, 2, 7, 6)  # QuPath: geometry = whole cell, nucleusGeometry = its nucleus
    path = tmp_path / "cells.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [cell]}))
    expected = np.zeros((10, 16), dtype=np.int32)
    expected[2:6, 3:7] = 1
    np.testing.assert_array_equal(geojson_label_map(path, (10, 16)), expected)


def test_ambiguous_png_and_geojson_labels(tmp_path: Path, sample) -> None:
    rgb, labels = sample
    root = _folder(tmp_path / "data", rgb, "a.geojson", _collection(labels))
    Image.fromarray(labels.astype(np.uint8)).save(root / "labels" / "a.png")
    err = _raises(root / "labels", "ambiguous label name 'a'", list_labelled_images, root)
    assert "a.png" in str(err) and "a.geojson" in str(err)


def test_geojson_and_gzipped_geojson_are_ambiguous(tmp_path: Path, sample) -> None:
    rgb, labels = sample
    root = _folder(tmp_path / "data", rgb, "a.geojson", _collection(labels))
    (root / "labels" / "a.geojson.gz").write_bytes(gzip.compress(b"{}"))
    _raises(root / "labels", "ambiguous label name 'a'", list_labelled_images, root)


@pytest.mark.parametrize(
    ("document", "pattern"),
    [
        ({"type": "FeatureCollection", "features": []}, "no Polygon or MultiPolygon"),
        ({"type": "FeatureCollection", "features": [_feature({"type": "Point", "coordinates": [1, 2]})]}, "no Polygon"),
        ('{"type": "FeatureCollection", "features": [', "not valid JSON"),
        (b"\xff\xfe not text", "not valid JSON .*UTF-8"),
        ({"type": "Topology"}, "not GeoJSON"),
        ([1, 2], "expected GeoJSON objects"),
        ({"type": "Polygon", "coordinates": [[1, 2]]}, "malformed Polygon"),
    ],
)
def test_invalid_geojson_labels(tmp_path: Path, sample, document, pattern: str) -> None:
    rgb, _ = sample
    root = _folder(tmp_path / "data", rgb, "a.geojson", document)
    (item,) = list_labelled_images(root)
    _raises(item.label_path, pattern, load_pair, item)


def test_corrupt_gzip_labels(tmp_path: Path, sample) -> None:
    rgb, _ = sample
    root = _folder(tmp_path / "data", rgb, "a.json", b"")
    path = root / "labels" / "a.geojson.gz"
    (root / "labels" / "a.json").unlink()
    path.write_bytes(gzip.compress(b'{"type": "FeatureCollection", "features": []}')[:-12] + b"garbage!" * 3)
    (item,) = list_labelled_images(root)
    _raises(path, "cannot read|not valid JSON", load_pair, item)


def test_polygons_outside_the_image(tmp_path: Path, sample) -> None:
    rgb, labels = sample
    # e.g. whole-slide coordinates of a tile: every polygon lies beyond the image
    root = _folder(tmp_path / "data", rgb, "a.geojson", _collection(labels, shift=(5000.0, 3000.0)))
    (item,) = list_labelled_images(root)
    err = _raises(item.label_path, "annotation file does not match its image", load_pair, item)
    assert str(item.image_path) in str(err)


def test_polygons_partly_outside_are_clipped_or_dropped(tmp_path: Path, sample, caplog) -> None:
    rgb, labels = sample
    document = _collection(labels)
    far = {"type": "Polygon", "coordinates": [[[900, 900], [950, 900], [950, 950], [900, 900]]]}
    document["features"].insert(0, _feature(far))
    root = _folder(tmp_path / "data", rgb, "a.geojson", document)
    (item,) = list_labelled_images(root)
    with caplog.at_level("WARNING"):
        _, loaded = load_pair(item)
    _assert_same_instances(labels, loaded)
    assert "1 of" in caplog.text and "outside" in caplog.text


# ----------------------------------------------------------------------------- unknown masks


def _with_unknown(root: Path, mask: np.ndarray, name: str = "a.png") -> Path:
    (root / "unknown").mkdir(exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(root / "unknown" / name)
    return root / "unknown" / name


def test_unknown_mask_discovered_and_loaded(tmp_path: Path, sample) -> None:
    rgb, labels = sample
    root = _folder(tmp_path / "data", rgb, "a.geojson", _collection(labels))
    mask = np.zeros(labels.shape, dtype=bool)
    mask[10:40, 20:70] = True
    path = _with_unknown(root, mask)
    _with_unknown(root, mask, "orphan.png")  # no image: ignored
    (item,) = list_labelled_images(root)
    assert item.unknown_path == path
    loaded = load_unknown(item)
    assert loaded.dtype == np.bool_
    np.testing.assert_array_equal(loaded, mask)
    np.testing.assert_array_equal(load_unknown(item, rgb.shape), mask)
    assert load_unknown(LabelledImage("a", item.image_path, item.label_path, None)) is None


def test_unknown_mask_rgba_counts_visible_non_black_pixels(tmp_path: Path, sample) -> None:
    rgb, labels = sample
    root = _folder(tmp_path / "data", rgb, "a.geojson", _collection(labels))
    painted = np.zeros(labels.shape + (4,), dtype=np.uint8)
    painted[..., :3] = 255  # transparent white: not marked
    painted[5:9, 6:30] = (255, 0, 0, 255)
    (root / "unknown").mkdir()
    Image.fromarray(painted).save(root / "unknown" / "a.png")
    (item,) = list_labelled_images(root)
    expected = np.zeros(labels.shape, dtype=bool)
    expected[5:9, 6:30] = True
    np.testing.assert_array_equal(load_unknown(item), expected)


def test_unknown_mask_size_mismatch(tmp_path: Path, sample) -> None:
    rgb, labels = sample
    root = _folder(tmp_path / "data", rgb, "a.geojson", _collection(labels))
    path = _with_unknown(root, np.ones((HEIGHT // 2, WIDTH), dtype=bool))
    (item,) = list_labelled_images(root)
    err = _raises(path, f"unknown-region mask is {WIDTH}x{HEIGHT // 2} but image", load_unknown, item)
    assert str(item.image_path) in str(err)


def test_ambiguous_unknown_masks(tmp_path: Path, sample) -> None:
    rgb, labels = sample
    root = _folder(tmp_path / "data", rgb, "a.geojson", _collection(labels))
    _with_unknown(root, np.ones(labels.shape, dtype=bool))
    _with_unknown(root, np.ones(labels.shape, dtype=bool), "a.tif")
    _raises(root / "unknown", "ambiguous unknown-region mask 'a'", list_labelled_images, root)


def test_labelled_array_rejects_a_mask_of_another_size(sample) -> None:
    rgb, labels = sample
    with pytest.raises(ValueError, match="unknown mask"):
        LabelledArray("a", rgb, labels, np.zeros((4, 4), dtype=bool))


def test_dihedral_transforms_masks_like_the_image(sample) -> None:
    rgb, labels = sample
    mask = labels % 3 == 1
    for seed in range(8):
        plain = dihedral(rgb, labels, np.random.default_rng(seed))
        out_rgb, out_labels, out_mask, nothing = dihedral(rgb, labels, np.random.default_rng(seed), mask, None)
        assert len(plain) == 2 and nothing is None
        np.testing.assert_array_equal(out_rgb, plain[0])
        np.testing.assert_array_equal(out_labels, plain[1])
        np.testing.assert_array_equal(out_mask, out_labels % 3 == 1)


def _cells(mask: np.ndarray, stride: int) -> np.ndarray:
    """(H / stride, W / stride) cells holding at least one pixel of ``mask``."""
    h, w = mask.shape
    return mask.reshape(h // stride, stride, w // stride, stride).any(axis=(1, 3))


def _dropped_case(seed: int = 11):
    """Square (rgb, labels without nucleus 5 (the middle one), unknown mask over it, its mask)."""
    rgb, labels = synthetic_nuclei(SIDE, SIDE, seed=seed)
    nucleus = labels == 5
    assert nucleus.any()
    unknown = ndimage.binary_dilation(nucleus, iterations=2)
    return rgb, np.where(nucleus, 0, labels), unknown, nucleus


def test_unknown_region_is_not_taught_as_background() -> None:
    config = ModelConfig.tiny()
    rgb, labels, unknown, nucleus = _dropped_case()
    stride = config.head_stride
    # cells of the dropped nucleus that share no pixel with any labelled nucleus
    cells = _cells(nucleus, stride) & ~_cells(labels > 0, stride)
    assert cells.sum() >= 10
    # crop = the whole image, no augmentation: deterministic
    taught = RandomCrops([LabelledArray("a", rgb, labels)], SIDE, config, TargetConfig(), seed=0, augment=False)[0][1]
    masked = RandomCrops([LabelledArray("a", rgb, labels, unknown)], SIDE, config, TargetConfig(), seed=0, augment=False)[0][1]
    assert np.all(taught.score[cells] == 0) and np.all(taught.score_weight[cells] == 1)  # background
    assert np.all(masked.score[cells] == 0) and np.all(masked.score_weight[cells] == 0)  # ignored
    # elsewhere the two agree, and labelled nuclei are taught in both
    elsewhere = ~_cells(unknown, stride)
    np.testing.assert_array_equal(taught.score_weight[elsewhere], masked.score_weight[elsewhere])
    np.testing.assert_array_equal(taught.score, masked.score)
    np.testing.assert_array_equal(taught.centres, masked.centres)
    assert len(taught.centres) == len(np.unique(labels)) - 1


def test_unknown_region_follows_the_augmentation() -> None:
    config = ModelConfig.tiny()
    rgb, labels, unknown, nucleus = _dropped_case()
    stride, seed = config.head_stride, 3
    with_mask = RandomCrops([LabelledArray("a", rgb, labels, unknown)], SIDE, config, TargetConfig(), seed=seed)
    without = RandomCrops([LabelledArray("a", rgb, labels)], SIDE, config, TargetConfig(), seed=seed)
    moved = 0
    for index in range(len(with_mask)):
        for epoch in range(4):
            with_mask.set_epoch(epoch)
            without.set_epoch(epoch)
            # replay the sample's random draws: crop position (always 0 here), then dihedral
            rng = np.random.default_rng([seed, epoch, index])
            assert int(rng.integers(1)) == 0 and int(rng.integers(1)) == 0
            _, t_labels, t_nucleus = dihedral(rgb, labels, rng, nucleus)
            cells = _cells(t_nucleus, stride) & ~_cells(t_labels > 0, stride)
            assert cells.sum() >= 10
            masked, taught = with_mask[index][1], without[index][1]
            assert np.all(masked.score_weight[cells] == 0)
            assert np.all(taught.score_weight[cells] == 1) and np.all(taught.score[cells] == 0)
            np.testing.assert_array_equal(masked.score, taught.score)
            moved += not np.array_equal(t_nucleus, nucleus)
    assert moved > 0  # some samples were really flipped or rotated


def test_unknown_combines_with_keep_fraction() -> None:
    config = ModelConfig.tiny(guide="hard")
    rgb, labels, unknown, _ = _dropped_case()
    kwargs = {"seed": 0, "augment": False, "keep_fraction": 0.5}
    masked = RandomCrops([LabelledArray("a", rgb, labels, unknown)], SIDE, config, TargetConfig(), **kwargs)[0][1]
    plain = RandomCrops([LabelledArray("a", rgb, labels)], SIDE, config, TargetConfig(), **kwargs)[0][1]
    assert len(masked.centres) == len(plain.centres) == round(0.5 * (len(np.unique(labels)) - 1))
    np.testing.assert_array_equal(masked.score, plain.score)
    # the mask only ever removes cells from the loss
    assert np.all(masked.score_weight <= plain.score_weight)
    cells = _cells(unknown, config.head_stride)
    assert np.all(masked.score_weight[cells & (masked.score == 0)] == 0)


def test_read_features_takes_every_form_qupath_writes(tmp_path: Path) -> None:
    """The one GeoJSON reader: a collection (nested too), a single feature, a list of features,
    a bare geometry; gzip by content and a byte-order mark are fine."""
    from wsi_frgnet.io.geojson import read_features

    square = {"type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]]]}
    feature = {"type": "Feature", "geometry": square, "properties": {"objectType": "detection"}}
    forms = {
        "collection.geojson": json.dumps({"type": "FeatureCollection", "features": [feature, {
            "type": "FeatureCollection", "features": [feature]}]}).encode(),
        "feature.json": json.dumps(feature).encode(),
        "list.geojson": json.dumps([feature, feature]).encode(),
        "bare.geojson": b"\xef\xbb\xbf" + json.dumps(square).encode(),
        "zipped.json.gz": gzip.compress(json.dumps([feature]).encode()),
    }
    counts = {}
    for name, data in forms.items():
        (tmp_path / name).write_bytes(data)
        features = read_features(tmp_path / name)
        assert all(f["type"] == "Feature" and f["geometry"] == square for f in features), name
        counts[name] = len(features)
    assert counts == {"collection.geojson": 2, "feature.json": 1, "list.geojson": 2, "bare.geojson": 1, "zipped.json.gz": 1}
    _raises(tmp_path / "absent.geojson", "no such file", read_features, tmp_path / "absent.geojson")
