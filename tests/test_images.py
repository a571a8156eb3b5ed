"""Tests for wsi_frgnet.io.images: readers, writers, atomic writes, error messages."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import raises_one_line_error as _raises
from PIL import Image

from wsi_frgnet.io.images import (
    IMAGE_SUFFIXES,
    read_label_map,
    read_rgb,
    write_label_map,
    write_png,
)


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)


@pytest.fixture
def labels() -> np.ndarray:
    out = np.zeros((6, 4), dtype=np.int32)
    out[1:3, 1:3] = 1
    out[4:, :2] = 300
    out[0, 3] = 65535
    return out


def _no_temp_files(folder: Path) -> bool:
    return not any(p.name.endswith(".tmp") for p in folder.iterdir())


# ----------------------------------------------------------------------------- round trips


def test_suffixes() -> None:
    assert IMAGE_SUFFIXES == (".png", ".tif", ".tiff", ".jpg", ".jpeg")


def test_png_rgb_round_trip(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "a.png"
    write_png(path, rgb)
    back = read_rgb(path)
    assert back.dtype == np.uint8 and back.shape == (5, 7, 3)
    np.testing.assert_array_equal(back, rgb)
    assert _no_temp_files(tmp_path)


def test_png_grey_uint8_round_trip(tmp_path: Path) -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = tmp_path / "g.png"
    write_png(path, grey)
    assert Image.open(path).mode == "L"
    back = read_rgb(path)
    assert back.shape == (3, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(back[..., c], grey)


def test_png_label_16bit_round_trip(tmp_path: Path, labels: np.ndarray) -> None:
    path = tmp_path / "lab.png"
    write_label_map(path, labels)
    with Image.open(path) as img:
        assert img.mode.startswith("I")  # 16-bit grey
    back = read_label_map(path)
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, labels)
    assert _no_temp_files(tmp_path)


def test_write_png_uint16(tmp_path: Path) -> None:
    arr = np.array([[0, 1], [1000, 65535]], dtype=np.uint16)
    path = tmp_path / "u16.png"
    write_png(path, arr)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), arr)


@pytest.mark.parametrize("suffix", [".tif", ".tiff"])
def test_tiff_label_int32_round_trip(tmp_path: Path, suffix: str) -> None:
    labels = np.zeros((5, 6), dtype=np.int32)
    labels[1:4, 2:5] = 70000  # does not fit in 16 bits
    labels[0, 0] = 2**31 - 1
    path = tmp_path / f"lab{suffix}"
    write_label_map(path, labels)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].dtype == np.int32
        assert tif.pages[0].compression == 8  # zlib / ADOBE_DEFLATE
    back = read_label_map(path)
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, labels)
    assert _no_temp_files(tmp_path)


def test_write_label_map_accepts_other_int_dtypes(tmp_path: Path) -> None:
    labels = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    write_label_map(tmp_path / "l.png", labels)
    write_label_map(tmp_path / "l.tif", labels.astype(np.int64))
    np.testing.assert_array_equal(read_label_map(tmp_path / "l.png"), labels)
    np.testing.assert_array_equal(read_label_map(tmp_path / "l.tif"), labels)


def test_read_rgb_tiff(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, rgb, photometric="rgb")
    np.testing.assert_array_equal(read_rgb(path), rgb)


def test_read_rgb_tiff_planar(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "planar.tiff"
    tifffile.imwrite(path, np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_rgb(path), rgb)


def test_read_rgb_tiff_first_page_only(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "multi.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, photometric="rgb")
        tif.write(rgb[:2, :3], photometric="rgb")
    np.testing.assert_array_equal(read_rgb(path), rgb)


def test_read_rgb_jpeg(tmp_path: Path) -> None:
    flat = np.full((8, 8, 3), (200, 100, 50), dtype=np.uint8)
    path = tmp_path / "a.jpg"
    Image.fromarray(flat).save(path, quality=95)
    back = read_rgb(path)
    assert back.shape == (8, 8, 3) and back.dtype == np.uint8
    assert np.abs(back.astype(int) - flat.astype(int)).max() <= 3


# ----------------------------------------------------------------------------- grey / RGBA / 16-bit


def test_read_rgb_grey_png_replicated(tmp_path: Path) -> None:
    grey = np.array([[0, 50], [100, 255]], dtype=np.uint8)
    path = tmp_path / "grey.png"
    Image.fromarray(grey, mode="L").save(path)
    back = read_rgb(path)
    assert back.shape == (2, 2, 3)
    assert (back == grey[..., None]).all()


def test_read_rgb_grey_tiff_replicated(tmp_path: Path) -> None:
    grey = np.array([[0, 50], [100, 255]], dtype=np.uint8)
    path = tmp_path / "grey.tif"
    tifffile.imwrite(path, grey)
    assert (read_rgb(path) == grey[..., None]).all()


def test_read_rgb_rgba_drops_alpha(tmp_path: Path, rgb: np.ndarray) -> None:
    alpha = np.full(rgb.shape[:2] + (1,), 17, dtype=np.uint8)
    rgba = np.concatenate([rgb, alpha], axis=2)
    png = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(png)
    np.testing.assert_array_equal(read_rgb(png), rgb)
    tif = tmp_path / "rgba.tif"
    tifffile.imwrite(tif, rgba, photometric="rgb", extrasamples=["unassalpha"])
    np.testing.assert_array_equal(read_rgb(tif), rgb)


def test_read_rgb_grey_alpha(tmp_path: Path) -> None:
    la = np.zeros((2, 3, 2), dtype=np.uint8)
    la[..., 0] = 90
    la[..., 1] = 255
    path = tmp_path / "la.png"
    Image.fromarray(la, mode="LA").save(path)
    assert (read_rgb(path) == 90).all()


def test_read_rgb_palette_png(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "pal.png"
    Image.fromarray(rgb).quantize(colors=8).save(path)
    back = read_rgb(path)
    assert back.shape == rgb.shape and back.dtype == np.uint8


def test_read_rgb_16bit_tiff_scaled(tmp_path: Path) -> None:
    rgb16 = np.zeros((2, 2, 3), dtype=np.uint16)
    rgb16[0, 0] = 65535
    rgb16[0, 1] = 257 * 100
    path = tmp_path / "rgb16.tif"
    tifffile.imwrite(path, rgb16, photometric="rgb")
    back = read_rgb(path)
    assert back.dtype == np.uint8
    assert (back[0, 0] == 255).all() and (back[0, 1] == 100).all() and (back[1] == 0).all()


def test_read_rgb_16bit_grey_png_scaled(tmp_path: Path) -> None:
    path = tmp_path / "g16.png"
    write_png(path, np.array([[0, 65535]], dtype=np.uint16))
    back = read_rgb(path)
    assert back.dtype == np.uint8 and back.shape == (1, 2, 3)
    assert (back[0, 0] == 0).all() and (back[0, 1] == 255).all()


# ----------------------------------------------------------------------------- read errors


def test_read_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.png"
    _raises(path, "no such file", read_rgb, path)
    _raises(path, "no such file", read_label_map, path)


def test_read_not_a_file(tmp_path: Path) -> None:
    path = tmp_path / "dir.png"
    path.mkdir()
    _raises(path, "not a file", read_rgb, path)
    _raises(path, "not a file", read_label_map, path)


@pytest.mark.parametrize("name", ["bad.png", "bad.jpg", "bad.tif", "bad.tiff"])
def test_read_corrupt(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"this is not an image\n\x00\x01 at all")
    _raises(path, re.escape("cannot read image ("), read_rgb, path)
    _raises(path, re.escape("cannot read image ("), read_label_map, path)


def test_read_truncated_png(tmp_path: Path, rgb: np.ndarray) -> None:
    good = tmp_path / "good.png"
    write_png(good, np.tile(rgb, (20, 20, 1)))
    path = tmp_path / "trunc.png"
    path.write_bytes(good.read_bytes()[:-200])
    _raises(path, "cannot read image", read_rgb, path)


def test_read_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.tif"
    path.write_bytes(b"")
    _raises(path, "cannot read image", read_rgb, path)


def test_read_rgb_unsupported_shape(tmp_path: Path) -> None:
    path = tmp_path / "vol.tif"
    tifffile.imwrite(path, np.zeros((2, 5, 6, 7), dtype=np.uint8))
    _raises(path, "unsupported image shape", read_rgb, path)


def test_read_rgb_unsupported_dtype(tmp_path: Path) -> None:
    path = tmp_path / "neg.tif"
    tifffile.imwrite(path, np.full((3, 3), -5, dtype=np.int16))
    _raises(path, "unsupported pixel type", read_rgb, path)


def test_read_label_map_rgb_rejected(tmp_path: Path, rgb: np.ndarray) -> None:
    png = tmp_path / "lab_rgb.png"
    Image.fromarray(rgb).save(png)
    _raises(png, "single-channel", read_label_map, png)
    tif = tmp_path / "lab_rgb.tif"
    tifffile.imwrite(tif, rgb, photometric="rgb")
    _raises(tif, "single-channel", read_label_map, tif)


def test_read_label_map_negative_rejected(tmp_path: Path) -> None:
    path = tmp_path / "neg.tif"
    tifffile.imwrite(path, np.array([[0, -1], [2, 3]], dtype=np.int32))
    _raises(path, "negative", read_label_map, path)


def test_read_label_map_non_integer_rejected(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    tifffile.imwrite(path, np.array([[0, 1.5]], dtype=np.float32))
    _raises(path, "non-integer", read_label_map, path)


def test_read_label_map_integral_float_accepted(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    tifffile.imwrite(path, np.array([[0, 2.0]], dtype=np.float32))
    np.testing.assert_array_equal(read_label_map(path), [[0, 2]])


def test_read_label_map_8bit_png(tmp_path: Path) -> None:
    labels = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    path = tmp_path / "l8.png"
    Image.fromarray(labels, mode="L").save(path)
    back = read_label_map(path)
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, labels)


def test_read_label_map_too_large(tmp_path: Path) -> None:
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, np.array([[0, 2**32 - 1]], dtype=np.uint32))
    _raises(path, "int32", read_label_map, path)


# ----------------------------------------------------------------------------- write errors


def test_write_label_png_over_16bit_suggests_tif(tmp_path: Path) -> None:
    path = tmp_path / "lab.png"
    labels = np.array([[0, 65536]], dtype=np.int32)
    _raises(path, r"\.tif", write_label_map, path, labels)
    assert list(tmp_path.iterdir()) == []


def test_write_label_bad_suffix(tmp_path: Path) -> None:
    path = tmp_path / "lab.jpg"
    _raises(path, "label map must be written as", write_label_map, path, np.zeros((2, 2), np.int32))
    assert list(tmp_path.iterdir()) == []


def test_write_png_bad_suffix(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "out.jpg"
    _raises(path, "PNG", write_png, path, rgb)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((2, 2), dtype=np.float32),
        np.zeros((2, 2, 4), dtype=np.uint8),
        np.zeros((2, 2, 3), dtype=np.uint16),
        np.zeros((0, 2), dtype=np.uint8),
    ],
)
def test_write_png_bad_array_is_programming_error(tmp_path: Path, array: np.ndarray) -> None:
    with pytest.raises(ValueError):
        write_png(tmp_path / "x.png", array)
    assert list(tmp_path.iterdir()) == []


def test_write_label_map_negative_is_programming_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_label_map(tmp_path / "x.tif", np.array([[-1]], dtype=np.int32))


@pytest.mark.parametrize("name", ["out.png", "lab.png", "lab.tif"])
def test_write_into_missing_directory(tmp_path: Path, rgb: np.ndarray, name: str) -> None:
    folder = tmp_path / "missing"
    path = folder / name
    if name == "out.png":
        _raises(path, "does not exist", write_png, path, rgb)
    else:
        _raises(path, "does not exist", write_label_map, path, np.ones((2, 2), np.int32))
    assert not folder.exists()
    assert list(tmp_path.iterdir()) == []


def test_write_onto_directory_leaves_no_temp(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "taken.png"
    path.mkdir()
    _raises(path, "cannot write", write_png, path, rgb)
    assert path.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.png"]


def test_failing_encoder_leaves_no_partial_file(
    tmp_path: Path, rgb: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error in the middle of encoding removes the temp file and keeps the old file."""
    path = tmp_path / "out.png"
    write_png(path, rgb)
    before = path.read_bytes()

    def boom(self, fp, *args, **kwargs):
        fp.write(b"partial garbage")
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(RuntimeError, match="encoder exploded"):
        write_png(path, rgb[::-1])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_failing_write_new_file_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "new.tif"

    def boom(fp, *args, **kwargs):
        fp.write(b"II*\x00partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", boom)
    _raises(path, "No space left on device", write_label_map, path, np.ones((2, 2), np.int32))
    assert list(tmp_path.iterdir()) == []


def test_overwrite_is_atomic_replacement(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "out.png"
    write_png(path, np.zeros_like(rgb))
    write_png(path, rgb)
    np.testing.assert_array_equal(read_rgb(path), rgb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_written_file_permissions_follow_umask(tmp_path: Path, rgb: np.ndarray) -> None:
    old = os.umask(0o022)
    try:
        write_png(tmp_path / "perm.png", rgb)
    finally:
        os.umask(old)
    assert (tmp_path / "perm.png").stat().st_mode & 0o777 == 0o644
