"""Tests for wsi_frgnet.io.data_folder: listing, manifest, pair loading, errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import raises_one_line_error as _raises
from PIL import Image

from wsi_frgnet.io.data_folder import (
    LabelledImage,
    find_images,
    list_labelled_images,
    load_pair,
    manifest_microns_per_pixel,
)


def _rgb(h: int = 4, w: int = 5, value: int = 0) -> np.ndarray:
    out = np.full((h, w, 3), value, dtype=np.uint8)
    out[0, 0] = (255, 0, 0)
    return out


def _labels(h: int = 4, w: int = 5) -> np.ndarray:
    out = np.zeros((h, w), dtype=np.uint16)
    out[1:3, 1:3] = 7
    return out


def _save_image(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".tif", ".tiff"):
        tifffile.imwrite(path, array, photometric="rgb" if array.ndim == 3 else None)
    else:
        Image.fromarray(array).save(path)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """images/{a.png,b.tif,c.jpg} with labels/{a.png,b.tif,c.tiff} and a manifest."""
    root = tmp_path / "data"
    _save_image(root / "images" / "a.png", _rgb())
    _save_image(root / "images" / "b.tif", _rgb(value=40))
    _save_image(root / "images" / "c.jpg", _rgb(value=80))
    _save_image(root / "labels" / "a.png", _labels())
    tifffile.imwrite(root / "labels" / "b.tif", _labels().astype(np.int32))
    tifffile.imwrite(root / "labels" / "c.tiff", _labels().astype(np.int32))
    (root / "manifest.json").write_text(
        json.dumps(
            [
                {"name": "a", "xml_microns_per_pixel": 0.25, "microns_per_pixel": 0.9},
                {"name": "b", "microns_per_pixel": 0.5},
                {"name": "c"},
            ]
        )
    )
    return root


# ----------------------------------------------------------------------------- find_images


def test_find_images_sorted_and_filtered(tmp_path: Path) -> None:
    for name in ["z.png", "a.TIF", "m.jpeg", "k.tiff", "b.jpg"]:
        _save_image(tmp_path / name, _rgb())
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.png").write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    found = find_images(tmp_path)
    assert [p.name for p in found] == ["a.TIF", "b.jpg", "k.tiff", "m.jpeg", "z.png"]


def test_find_images_missing(tmp_path: Path) -> None:
    path = tmp_path / "nope"
    _raises(path, "does not exist", find_images, path)


def test_find_images_not_a_dir(tmp_path: Path) -> None:
    path = tmp_path / "file.png"
    path.write_bytes(b"")
    _raises(path, "not a directory", find_images, path)


def test_find_images_empty(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("x")
    _raises(tmp_path, "no images", find_images, tmp_path)


# ----------------------------------------------------------------------------- listing


def test_list_labelled_images(data_dir: Path) -> None:
    items = list_labelled_images(data_dir)
    assert [i.name for i in items] == ["a", "b", "c"]
    assert items[0] == LabelledImage(
        "a", data_dir / "images" / "a.png", data_dir / "labels" / "a.png", 0.25
    )
    assert items[1].label_path == data_dir / "labels" / "b.tif"
    assert items[1].microns_per_pixel == 0.5
    assert items[2].label_path == data_dir / "labels" / "c.tiff"
    assert items[2].microns_per_pixel is None


def test_list_without_manifest(data_dir: Path) -> None:
    (data_dir / "manifest.json").unlink()
    items = list_labelled_images(data_dir)
    assert all(i.microns_per_pixel is None for i in items)


def test_list_missing_data_dir(tmp_path: Path) -> None:
    path = tmp_path / "nope"
    _raises(path, "does not exist", list_labelled_images, path)


def test_list_data_dir_not_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    _raises(path, "not a directory", list_labelled_images, path)


def test_list_no_images_folder(tmp_path: Path) -> None:
    (tmp_path / "labels").mkdir()
    _raises(tmp_path, "no images/ subfolder", list_labelled_images, tmp_path)


def test_list_empty_images_folder(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("x")
    _raises(tmp_path / "images", "empty data set", list_labelled_images, tmp_path)


def test_list_no_labels_folder(data_dir: Path) -> None:
    for p in (data_dir / "labels").iterdir():
        p.unlink()
    (data_dir / "labels").rmdir()
    _raises(data_dir, "no labels/ subfolder", list_labelled_images, data_dir)


def test_list_no_labels_folder_not_required(data_dir: Path) -> None:
    for p in (data_dir / "labels").iterdir():
        p.unlink()
    (data_dir / "labels").rmdir()
    items = list_labelled_images(data_dir, require_labels=False)
    assert [i.name for i in items] == ["a", "b", "c"]
    assert all(i.label_path is None for i in items)
    assert items[0].microns_per_pixel == 0.25


def test_list_image_without_label(data_dir: Path) -> None:
    (data_dir / "labels" / "b.tif").unlink()
    image = data_dir / "images" / "b.tif"
    err = _raises(image, "no label map", list_labelled_images, data_dir)
    assert "labels/b.png|.tif" in str(err)


def test_list_image_without_label_not_required(data_dir: Path) -> None:
    (data_dir / "labels" / "b.tif").unlink()
    items = list_labelled_images(data_dir, require_labels=False)
    assert items[1].name == "b" and items[1].label_path is None
    assert items[0].label_path is not None


def test_list_ambiguous_images(data_dir: Path) -> None:
    _save_image(data_dir / "images" / "a.tif", _rgb())
    err = _raises(data_dir / "images", "ambiguous", list_labelled_images, data_dir)
    assert "a.png" in str(err) and "a.tif" in str(err)


def test_list_ambiguous_labels(data_dir: Path) -> None:
    tifffile.imwrite(data_dir / "labels" / "a.tif", _labels().astype(np.int32))
    err = _raises(data_dir / "labels", "ambiguous", list_labelled_images, data_dir)
    assert "a.png" in str(err) and "a.tif" in str(err)


def test_list_ambiguous_labels_even_when_not_required(data_dir: Path) -> None:
    tifffile.imwrite(data_dir / "labels" / "a.tif", _labels().astype(np.int32))
    _raises(data_dir / "labels", "ambiguous", list_labelled_images, data_dir, require_labels=False)


def test_list_orphan_labels_warned(data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    _save_image(data_dir / "labels" / "zz.png", _labels())
    with caplog.at_level(logging.WARNING, logger="wsi_frgnet.io.data_folder"):
        items = list_labelled_images(data_dir)
    assert [i.name for i in items] == ["a", "b", "c"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "zz.png" in warnings[0].getMessage()


def test_list_ignores_non_label_files(data_dir: Path) -> None:
    (data_dir / "labels" / "a.jpg").write_bytes(b"")  # jpg is not a label format
    (data_dir / "labels" / "notes.txt").write_text("x")
    assert len(list_labelled_images(data_dir)) == 3


# ----------------------------------------------------------------------------- manifest


def test_manifest_median(data_dir: Path) -> None:
    # a -> 0.25 (xml_ wins), b -> 0.5, c -> none: median of [0.25, 0.5]
    assert manifest_microns_per_pixel(data_dir) == pytest.approx(0.375)


def test_manifest_median_odd(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(
        json.dumps(
            [
                {"name": "a", "microns_per_pixel": 0.5},
                {"name": "b", "microns_per_pixel": 0.25},
                {"name": "c", "xml_microns_per_pixel": 1.0},
                {"name": "d", "microns_per_pixel": None},
            ]
        )
    )
    assert manifest_microns_per_pixel(tmp_path) == 0.5


def test_manifest_absent(tmp_path: Path) -> None:
    assert manifest_microns_per_pixel(tmp_path) is None


def test_manifest_without_sizes(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps([{"name": "a"}, {"name": "b"}]))
    assert manifest_microns_per_pixel(tmp_path) is None


def test_manifest_invalid_json(data_dir: Path) -> None:
    path = data_dir / "manifest.json"
    path.write_text('[{"name": "a",\n  oops}]')
    _raises(path, "not valid JSON", manifest_microns_per_pixel, data_dir)
    _raises(path, "not valid JSON", list_labelled_images, data_dir)


def test_manifest_not_a_list(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"name": "a"}))
    _raises(path, "JSON list", manifest_microns_per_pixel, tmp_path)


def test_manifest_entry_without_name(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps([{"microns_per_pixel": 0.5}]))
    _raises(path, "name", manifest_microns_per_pixel, tmp_path)


@pytest.mark.parametrize("value", [-1, 0, "abc", True, [0.5]])
def test_manifest_bad_mpp(tmp_path: Path, value: object) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps([{"name": "a", "microns_per_pixel": value}]))
    _raises(path, "invalid microns_per_pixel", manifest_microns_per_pixel, tmp_path)


def test_manifest_conflicting_duplicates(data_dir: Path) -> None:
    path = data_dir / "manifest.json"
    path.write_text(
        json.dumps([{"name": "a", "microns_per_pixel": 0.5}, {"name": "a", "microns_per_pixel": 0.25}])
    )
    _raises(path, "conflicting", list_labelled_images, data_dir)


# ----------------------------------------------------------------------------- load_pair


def test_load_pair(data_dir: Path) -> None:
    items = list_labelled_images(data_dir)
    for item in items:
        rgb, labels = load_pair(item)
        assert rgb.dtype == np.uint8 and rgb.shape == (4, 5, 3)
        assert labels.dtype == np.int32 and labels.shape == (4, 5)
        np.testing.assert_array_equal(labels, _labels())
    rgb, _ = load_pair(items[0])
    np.testing.assert_array_equal(rgb, _rgb())


def test_load_pair_size_mismatch(data_dir: Path) -> None:
    _save_image(data_dir / "labels" / "a.png", _labels(h=6, w=3))
    item = list_labelled_images(data_dir)[0]
    err = _raises(item.label_path, "label map is 3x6 but image", load_pair, item)
    assert str(item.image_path) in str(err)
    assert str(err).endswith("is 5x4")


def test_load_pair_without_label(data_dir: Path) -> None:
    item = LabelledImage("a", data_dir / "images" / "a.png", None, None)
    _raises(item.image_path, "no label map", load_pair, item)


def test_load_pair_rgb_label_rejected(data_dir: Path) -> None:
    _save_image(data_dir / "labels" / "a.png", _rgb())
    item = list_labelled_images(data_dir)[0]
    _raises(item.label_path, "single-channel", load_pair, item)
