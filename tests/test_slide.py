"""Slides: levels, µm/px, bounds, read coordinates, thumbnails, plain images and error paths,
on small synthetic slides whose pixel values encode their position (see slide_factory)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image
from slide_factory import (
    downsample_levels,
    position_pattern,
    write_aperio_svs,
    write_pyramidal_tiff,
    write_tiff_with_bounds,
)

from wsi_frgnet.errors import InputError
from wsi_frgnet.io.slide import (
    ImageSlide,
    OpenSlideSlide,
    open_slide,
    require_microns_per_pixel,
)

HEIGHT, WIDTH = 768, 1024
CMU_SMALL = Path(__file__).parents[2] / "shared/data/slides/CMU-1-Small-Region.svs"


@pytest.fixture(scope="module")
def source() -> np.ndarray:
    return position_pattern(HEIGHT, WIDTH)


@pytest.fixture(scope="module")
def pyramid(source: np.ndarray) -> list[np.ndarray]:
    return downsample_levels(source, 3)


@pytest.fixture(scope="module")
def tiff_path(tmp_path_factory: pytest.TempPathFactory, source: np.ndarray) -> Path:
    return write_pyramidal_tiff(tmp_path_factory.mktemp("tiff") / "slide.tif", source, mpp=0.25, levels=3)


@pytest.fixture(scope="module")
def svs_path(tmp_path_factory: pytest.TempPathFactory, source: np.ndarray) -> Path:
    return write_aperio_svs(tmp_path_factory.mktemp("svs") / "slide.svs", source, mpp=0.25, levels=2)


def expected_region(image: np.ndarray, x: int, y: int, width: int, height: int) -> np.ndarray:
    """``image``'s pixels in the given box (image px), white outside the image."""
    out = np.full((height, width, 3), 255, np.uint8)
    left, top = max(x, 0), max(y, 0)
    right, bottom = min(x + width, image.shape[1]), min(y + height, image.shape[0])
    if left < right and top < bottom:
        out[top - y : bottom - y, left - x : right - x] = image[top:bottom, left:right]
    return out


# ----------------------------------------------------------------------------- OpenSlide formats


def test_pyramidal_tiff_levels_and_metadata(tiff_path: Path) -> None:
    with open_slide(tiff_path) as slide:
        assert isinstance(slide, OpenSlideSlide)
        assert slide.path == tiff_path
        assert slide.dimensions == (WIDTH, HEIGHT)
        assert slide.level_count == 3
        assert slide.level_dimensions == ((1024, 768), (512, 384), (256, 192))
        assert slide.level_downsamples == (1.0, 2.0, 4.0)
        assert slide.microns_per_pixel == pytest.approx(0.25)
        assert require_microns_per_pixel(slide) == pytest.approx(0.25)
        assert slide.bounds == (0, 0, WIDTH, HEIGHT)


@pytest.mark.parametrize(
    "box",
    [
        (0, 0, 256, 256),
        (300, 200, 100, 50),  # across no tile border
        (250, 250, 300, 20),  # across tile borders
        (1000, 700, 100, 100),  # partly right of / below the slide
        (-20, -10, 64, 32),  # partly left of / above the slide
        (2000, 2000, 10, 10),  # entirely outside
        (0, 0, WIDTH, HEIGHT),
    ],
)
def test_read_level0_is_lossless_with_white_outside(tiff_path: Path, source: np.ndarray, box) -> None:
    with open_slide(tiff_path) as slide:
        region = slide.read(*box)
    assert region.dtype == np.uint8 and region.shape == (box[3], box[2], 3)
    np.testing.assert_array_equal(region, expected_region(source, *box))


@pytest.mark.parametrize(
    ("level", "x", "y", "width", "height"),
    [(1, 200, 100, 64, 48), (1, 0, 0, 512, 384), (2, 512, 384, 100, 20), (2, -40, 8, 30, 30)],
)
def test_read_at_reduced_level_uses_level0_origin(tiff_path, pyramid, level, x, y, width, height) -> None:
    """(x, y) in level-0 px, the size in px of the level (OpenSlide's read_region rule)."""
    scale = 2**level
    with open_slide(tiff_path) as slide:
        region = slide.read(x, y, width, height, level)
    np.testing.assert_array_equal(region, expected_region(pyramid[level], x // scale, y // scale, width, height))


def test_best_level_for_downsample(tiff_path: Path) -> None:
    with open_slide(tiff_path) as slide:
        cases = {0.5: 0, 1.0: 0, 1.9: 0, 1.9995: 1, 2.0: 1, 3.99: 1, 4.0: 2, 100.0: 2}
        assert {d: slide.best_level_for_downsample(d) for d in cases} == cases


def test_thumbnail_size_downsample_and_pixels(tiff_path: Path, pyramid) -> None:
    with open_slide(tiff_path) as slide:
        image, downsample = slide.thumbnail(256)  # exactly level 2
        assert image.shape == (192, 256, 3) and image.dtype == np.uint8
        assert downsample == pytest.approx(4.0)
        np.testing.assert_array_equal(image, pyramid[2])

        image, downsample = slide.thumbnail(100)
        assert image.shape == (75, 100, 3)
        assert downsample == pytest.approx(10.24)

        image, downsample = slide.thumbnail(5000)  # never upscaled
        assert image.shape == (HEIGHT, WIDTH, 3) and downsample == 1.0


def test_thumbnail_reduces_in_chunks_from_a_single_level(tmp_path: Path, monkeypatch) -> None:
    """A one-level slide makes the thumbnail from level 0 in chunks without seams."""
    import wsi_frgnet.io.slide as slide_module

    monkeypatch.setattr(slide_module, "_THUMBNAIL_CHUNK", 96)
    rgb = np.full((HEIGHT, WIDTH, 3), 200, np.uint8)
    rgb[:, WIDTH // 2 :] = 40
    path = write_pyramidal_tiff(tmp_path / "one.tif", rgb, levels=1)
    with open_slide(path) as slide:
        image, downsample = slide.thumbnail(128)
    assert image.shape == (96, 128, 3) and downsample == 8.0
    np.testing.assert_array_equal(image[:, :63], 200)
    np.testing.assert_array_equal(image[:, 65:], 40)


def test_aperio_svs(svs_path: Path, source: np.ndarray) -> None:
    with open_slide(svs_path) as slide:
        assert isinstance(slide, OpenSlideSlide)
        assert slide.level_dimensions == ((1024, 768), (512, 384))
        assert slide.microns_per_pixel == pytest.approx(0.25)
        region = slide.read(100, 50, 200, 100).astype(int)
    difference = np.abs(region - expected_region(source, 100, 50, 200, 100))
    assert difference.mean() < 2 and difference.max() <= 16  # JPEG


def test_non_power_of_two_downsamples_come_from_openslide(tmp_path: Path) -> None:
    path = write_aperio_svs(tmp_path / "odd.svs", position_pattern(750, 1001), levels=3)
    with open_slide(path) as slide, openslide.OpenSlide(path) as reference:
        assert slide.level_dimensions == ((1001, 750), (501, 375), (251, 188))
        assert slide.level_downsamples == reference.level_downsamples
        assert slide.level_downsamples[2] != 4.0
        assert slide.best_level_for_downsample(3.99) == 2
        assert slide.best_level_for_downsample(3.95) == 1


def test_bounds_from_a_leica_slide(tmp_path: Path, source: np.ndarray) -> None:
    path = write_tiff_with_bounds(tmp_path / "bounds.scn", source, offset=(64, 32), margin=(16, 48))
    with open_slide(path) as slide:
        assert slide.dimensions == (64 + WIDTH + 16, 32 + HEIGHT + 48)
        assert slide.bounds == (64, 32, WIDTH, HEIGHT)
        assert slide.microns_per_pixel == pytest.approx(0.25)
        np.testing.assert_array_equal(slide.read(64, 32, WIDTH, HEIGHT), source)
        # transparent (no tiles) around the image comes back white
        np.testing.assert_array_equal(slide.read(0, 0, 64, 32), 255)
        np.testing.assert_array_equal(slide.read(48, 32, 32, 8)[:, 16:], source[:8, :16])
        np.testing.assert_array_equal(slide.read(48, 32, 32, 8)[:, :16], 255)


def test_mpp_override_and_missing_mpp(tmp_path: Path, source: np.ndarray, tiff_path: Path) -> None:
    with open_slide(tiff_path, microns_per_pixel=0.5) as slide:
        assert slide.microns_per_pixel == 0.5
    path = tmp_path / "tiled-no-resolution.tif"
    tifffile.imwrite(path, source, photometric="rgb", tile=(256, 256), metadata=None)
    with open_slide(path) as slide:
        assert isinstance(slide, OpenSlideSlide) and slide.microns_per_pixel is None
        with pytest.raises(InputError, match="no µm/px .*--mpp") as info:
            require_microns_per_pixel(slide)
        assert str(path) in str(info.value)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(InputError, match="µm/px"):
            open_slide(tiff_path, microns_per_pixel=bad)


def test_concurrent_reads_share_one_handle(tiff_path: Path, source: np.ndarray) -> None:
    boxes = [(x, y, 128, 128) for x in range(0, WIDTH, 128) for y in range(0, HEIGHT, 128)]
    with open_slide(tiff_path) as slide, ThreadPoolExecutor(4) as pool:
        regions = list(pool.map(lambda box: slide.read(*box), boxes))
    for box, region in zip(boxes, regions):
        np.testing.assert_array_equal(region, expected_region(source, *box))


def test_closed_slide_refuses_reads(tiff_path: Path, tmp_path: Path, source: np.ndarray) -> None:
    png = tmp_path / "a.png"
    Image.fromarray(source).save(png)
    for path in (tiff_path, png):
        with open_slide(path) as slide:
            pass
        with pytest.raises(ValueError, match="closed"):
            slide.read(0, 0, 1, 1)


@pytest.mark.skipif(not CMU_SMALL.is_file(), reason=f"{CMU_SMALL} not present")
def test_cmu_small_region() -> None:
    with open_slide(CMU_SMALL) as slide:
        assert isinstance(slide, OpenSlideSlide)
        assert slide.dimensions == (2220, 2967)
        assert slide.microns_per_pixel == pytest.approx(0.499, abs=1e-3)
        region = slide.read(1000, 1000, 256, 256)
        assert region.shape == (256, 256, 3) and region.dtype == np.uint8
        assert region.std() > 5  # tissue, not blank
        image, downsample = slide.thumbnail(512)
        assert max(image.shape[:2]) == 512 and downsample == pytest.approx(2967 / 512)


# ----------------------------------------------------------------------------- plain images


def test_png_is_an_image_slide(tmp_path: Path, source: np.ndarray) -> None:
    path = tmp_path / "image.png"
    Image.fromarray(source).save(path)
    with open_slide(path) as slide:
        assert isinstance(slide, ImageSlide)
        assert slide.dimensions == (WIDTH, HEIGHT) and slide.level_count == 1
        assert slide.level_downsamples == (1.0,) and slide.bounds == (0, 0, WIDTH, HEIGHT)
        assert slide.microns_per_pixel is None
        with pytest.raises(InputError, match="--mpp"):
            require_microns_per_pixel(slide)
        np.testing.assert_array_equal(slide.read(-5, 700, 40, 100), expected_region(source, -5, 700, 40, 100))
        assert slide.best_level_for_downsample(8.0) == 0
        image, downsample = slide.thumbnail(256)
        assert image.shape == (192, 256, 3) and downsample == 4.0
        with pytest.raises(ValueError, match="level"):
            slide.read(0, 0, 8, 8, level=1)
    with open_slide(path, microns_per_pixel=0.5) as slide:
        assert slide.microns_per_pixel == 0.5
        assert require_microns_per_pixel(slide) == 0.5


@pytest.mark.parametrize(
    ("resolution", "unit", "expected"),
    [
        ((40000, 40000), "CENTIMETER", 0.25),
        ((101600, 101600), "INCH", 0.25),
        ((1, 1), "INCH", None),  # 25400 µm/px: implausible
        ((72, 72), "INCH", None),  # 352.8 µm/px: implausible
        ((40000, 40000), "NONE", None),  # no unit
    ],
)
def test_stripped_tiff_is_an_image_slide_with_mpp_from_tags(tmp_path, source, resolution, unit, expected) -> None:
    path = tmp_path / "stripped.tif"
    tifffile.imwrite(path, source, photometric="rgb", resolution=resolution, resolutionunit=unit, metadata=None)
    assert openslide.OpenSlide.detect_format(path) is None
    with open_slide(path) as slide:
        assert isinstance(slide, ImageSlide)
        assert slide.microns_per_pixel == (None if expected is None else pytest.approx(expected))
        np.testing.assert_array_equal(slide.read(0, 0, WIDTH, HEIGHT), source)


# ----------------------------------------------------------------------------- errors


def truncated(path: Path, out: Path, fraction: float) -> Path:
    data = path.read_bytes()
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


def assert_input_error(path: Path, match: str, microns_per_pixel: float | None = None) -> None:
    with pytest.raises(InputError, match=match) as info:
        open_slide(path, microns_per_pixel)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and message.count(str(path)) == 1, message
    assert "\n" not in message, message


def test_error_missing_folder_empty(tmp_path: Path) -> None:
    assert_input_error(tmp_path / "missing.svs", "no such file")
    assert_input_error(tmp_path, "folder")
    (tmp_path / "empty.svs").touch()
    assert_input_error(tmp_path / "empty.svs", "empty")


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("kind", ["svs", "tif"])
def test_error_truncated_slide(tmp_path: Path, svs_path: Path, tiff_path: Path, kind: str, fraction: float) -> None:
    """Cut anywhere, a slide fails at open (OpenSlide detects it or not, depending on where)."""
    source = svs_path if kind == "svs" else tiff_path
    assert_input_error(truncated(source, tmp_path / f"cut.{kind}", fraction), "cannot read slide")


def test_error_corrupt_tile_fails_at_open(tmp_path: Path, source: np.ndarray) -> None:
    """OpenSlide opens a slide whose level-0 tiles are damaged (its quickhash reads only the
    smallest level): the decode check on open must catch the last tile of each level."""
    path = write_pyramidal_tiff(tmp_path / "corrupt.tif", source, levels=2)
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[-1], tif.pages[0].databytecounts[-1]
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xff" * count)
    with openslide.OpenSlide(path):
        pass  # OpenSlide alone does not notice
    assert_input_error(path, "cannot read slide")


def test_error_not_a_slide(tmp_path: Path, source: np.ndarray) -> None:
    noise = tmp_path / "noise.svs"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert_input_error(noise, "not a slide or image")
    text = tmp_path / "notes.txt"
    text.write_text("not a slide\n" * 50, encoding="utf-8")
    assert_input_error(text, "not a slide or image")
    png = tmp_path / "image.png"
    Image.fromarray(source).save(png)
    assert_input_error(truncated(png, tmp_path / "cut.png", 0.5), "cannot read")
    stripped = tmp_path / "stripped.tif"
    tifffile.imwrite(stripped, source, photometric="rgb", metadata=None)
    assert_input_error(truncated(stripped, tmp_path / "cut.tif", 0.5), "cannot read")
