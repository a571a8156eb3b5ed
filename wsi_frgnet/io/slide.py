"""Whole-slide images: one interface over OpenSlide formats and plain images.

Frames and units: *level-0 px* are full-resolution pixels, x right, y down, (0, 0) the slide's
top-left corner; every position (``x``, ``y``, ``bounds``) is in level-0 px. Level ``i`` has
``level_dimensions[i]`` (width, height) px and ``level_downsamples[i]`` level-0 px per level-i
px, as OpenSlide reports them (not always powers of two). ``read(x, y, width, height, level)``
follows OpenSlide's ``read_region`` rule: top-left corner in level-0 px, size in px of
``level``; it returns ``(height, width, 3)`` uint8 RGB, white where the slide has no pixels
(outside it, or transparent). µm/px is the level-0 pixel size, the mean of x and y.

The only module that imports :mod:`openslide`. User-caused failures (missing, empty, truncated
or unrecognised file) raise :class:`InputError`, one line starting with the path; programming
errors (bad level, non-positive size, reading a closed slide) raise ValueError.
"""

from __future__ import annotations

import abc
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import openslide
import tifffile
from PIL import Image, UnidentifiedImageError

from wsi_frgnet.errors import InputError
from wsi_frgnet.io.images import read_rgb

log = logging.getLogger(__name__)

PLAUSIBLE_MICRONS_PER_PIXEL = (0.05, 20.0)  # outside this a resolution tag is wrong (e.g. 72 dpi)
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_CHECK_LAST_LEVEL_MAX_PIXELS = 4096 * 1024  # read the whole last level on open when it is this small
_THUMBNAIL_CHUNK = 2048  # level px per side read at a time while making a thumbnail
_DOWNSAMPLE_TOLERANCE = 1e-3


def _one_line(text: object, path: Path, limit: int = 200) -> str:
    """``text`` on one line, the full ``path`` (already leading the message) shortened to its name."""
    line = " ".join(str(text).replace(str(path), path.name).split()) or type(text).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _plausible(mpp: float | None) -> float | None:
    """``mpp`` if it is a finite µm/px within PLAUSIBLE_MICRONS_PER_PIXEL, else None."""
    low, high = PLAUSIBLE_MICRONS_PER_PIXEL
    return float(mpp) if mpp is not None and math.isfinite(mpp) and low <= mpp <= high else None


class Slide(abc.ABC):
    """A slide: a pyramid of levels readable as RGB regions (see the module docstring for
    frames and units). Use as a context manager, or call :meth:`close`."""

    def __init__(self, path: Path, level_dimensions: Sequence[tuple[int, int]], level_downsamples: Sequence[float],
                 file_mpp: float | None, bounds: tuple[int, int, int, int] | None, override_mpp: float | None) -> None:
        """Subclasses pass the level geometry, the file's µm/px (None if unknown), the bounds
        (None: the whole slide) and the user's µm/px override (None: use the file's)."""
        self.path = Path(path)
        self._level_dimensions = tuple((int(w), int(h)) for w, h in level_dimensions)
        self._level_downsamples = tuple(float(d) for d in level_downsamples)
        self._microns_per_pixel = override_mpp if override_mpp is not None else _plausible(file_mpp)
        if override_mpp is None and file_mpp is not None and self._microns_per_pixel is None:
            log.warning("%s: ignoring implausible %.6g µm/px in the file's metadata", self.path, file_mpp)
        self._bounds = bounds if bounds is not None else (0, 0, *self._level_dimensions[0])

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height) in px."""
        return self._level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self._level_dimensions)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """(width, height) in px of each level, level 0 first."""
        return self._level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """Level-0 px per px of each level (OpenSlide's values, e.g. 3.9887, never rounded)."""
        return self._level_downsamples

    @property
    def microns_per_pixel(self) -> float | None:
        """Level-0 µm/px (mean of x and y): the override given to :func:`open_slide`, else the
        file's value if plausible, else None."""
        return self._microns_per_pixel

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        """(x, y, width, height) in level-0 px of the non-empty region the file declares
        (``openslide.bounds-*``); the whole slide (0, 0, W, H) when it declares none."""
        return self._bounds

    def best_level_for_downsample(self, downsample: float) -> int:
        """The highest level whose downsample is <= ``downsample`` (+1e-3); level 0 if none."""
        best = 0
        for level, level_downsample in enumerate(self._level_downsamples):
            if level_downsample <= downsample + _DOWNSAMPLE_TOLERANCE:
                best = level
        return best

    def _check_read(self, width: int, height: int, level: int) -> None:
        if not 0 <= level < self.level_count:
            raise ValueError(f"level {level} out of range: {self.path} has {self.level_count}")
        if width <= 0 or height <= 0:
            raise ValueError(f"read size must be positive, got {width}x{height}")

    @abc.abstractmethod
    def read(self, x: int, y: int, width: int, height: int, level: int = 0) -> np.ndarray:
        """``(height, width, 3)`` uint8 RGB of the region whose top-left corner is (x, y) in
        level-0 px and whose size is ``width`` x ``height`` px of ``level``; white where the
        slide has no pixels."""

    def thumbnail(self, max_size: int) -> tuple[np.ndarray, float]:
        """(RGB image of the whole slide with its longer side <= ``max_size`` px, downsample):
        level-0 px = thumbnail px x downsample (>= 1; never upscaled). Read from the smallest
        level with enough resolution, in chunks, box-reduced, then resized with Pillow."""
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        width, height = self.dimensions
        downsample = max(1.0, max(width, height) / max_size)
        size = tuple(max(1, min(max_size, round(side / downsample))) for side in (width, height))
        level = self.best_level_for_downsample(downsample)
        level_downsample = self._level_downsamples[level]
        level_width, level_height = self._level_dimensions[level]
        factor = max(1, int(downsample / level_downsample))  # integer box reduction while reading
        chunk = factor * max(1, _THUMBNAIL_CHUNK // factor)
        canvas = Image.new("RGB", (-(-level_width // factor), -(-level_height // factor)), "white")
        for top in range(0, level_height, chunk):
            for left in range(0, level_width, chunk):
                pixels = self.read(
                    round(left * level_downsample),
                    round(top * level_downsample),
                    min(chunk, level_width - left),
                    min(chunk, level_height - top),
                    level,
                )
                piece = Image.fromarray(pixels)
                canvas.paste(piece.reduce(factor) if factor > 1 else piece, (left // factor, top // factor))
        if canvas.size != size:
            canvas = canvas.resize(size, Image.Resampling.BILINEAR)  # antialiased when shrinking
        return np.array(canvas), downsample

    @abc.abstractmethod
    def close(self) -> None:
        """Release the file; reading afterwards is an error."""

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, {self.dimensions}, levels={self.level_count})"


class OpenSlideSlide(Slide):
    """A slide in any format OpenSlide reads (SVS, NDPI, MRXS, SCN, tiled TIFF, ...).

    Reads from several threads through one instance are safe (one OpenSlide handle is);
    close only after they finish."""

    def __init__(self, path: Path, microns_per_pixel: float | None = None) -> None:
        """Open ``path`` (InputError if OpenSlide cannot) and decode a few regions so a truncated
        file fails here; ``microns_per_pixel`` overrides the file's µm/px."""
        path = Path(path)
        try:
            self._handle: openslide.OpenSlide | None = openslide.OpenSlide(path)
        except (openslide.OpenSlideError, OSError) as exc:
            raise InputError(f"{path}: cannot read slide ({_one_line(exc, path)})") from exc
        try:
            props = self._handle.properties
            mpps = [float(props[key]) for key in (openslide.PROPERTY_NAME_MPP_X, openslide.PROPERTY_NAME_MPP_Y)
                    if key in props]
            width, height = self._handle.dimensions
            x = int(props.get(openslide.PROPERTY_NAME_BOUNDS_X, 0))
            y = int(props.get(openslide.PROPERTY_NAME_BOUNDS_Y, 0))
            bounds = (x, y, int(props.get(openslide.PROPERTY_NAME_BOUNDS_WIDTH, width - x)),
                      int(props.get(openslide.PROPERTY_NAME_BOUNDS_HEIGHT, height - y)))
            super().__init__(path, self._handle.level_dimensions, self._handle.level_downsamples,
                             sum(mpps) / len(mpps) if mpps else None, bounds, microns_per_pixel)
            self._check_readable()
        except BaseException:
            self.close()
            raise

    def _check_readable(self) -> None:
        """Decode the bottom-right pixel of every level and the whole last level (its centre
        when large): the tiles a truncated file loses first."""
        for level, ((width, height), downsample) in enumerate(zip(self.level_dimensions, self.level_downsamples)):
            self.read(int((width - 1) * downsample), int((height - 1) * downsample), 1, 1, level)
        (width, height), downsample, last = self.level_dimensions[-1], self.level_downsamples[-1], self.level_count - 1
        if width * height <= _CHECK_LAST_LEVEL_MAX_PIXELS:
            self.read(0, 0, width, height, last)
        else:
            x, y = max(0, width // 2 - 256), max(0, height // 2 - 256)
            self.read(int(x * downsample), int(y * downsample), min(512, width), min(512, height), last)

    def read(self, x: int, y: int, width: int, height: int, level: int = 0) -> np.ndarray:
        self._check_read(width, height, level)
        if self._handle is None:
            raise ValueError(f"{self.path}: slide is closed")
        try:
            region = self._handle.read_region((int(x), int(y)), level, (int(width), int(height)))
        except openslide.OpenSlideError as exc:
            raise InputError(f"{self.path}: cannot read slide ({_one_line(exc, self.path)})") from exc
        rgba = np.asarray(region)  # un-premultiplied RGBA
        if rgba[..., 3].min() == 255:
            return rgba[..., :3]  # a view: callers stack or resample it anyway
        rgb, alpha = rgba[..., :3].astype(np.uint32), rgba[..., 3:].astype(np.uint32)
        return ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)  # over white

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class ImageSlide(Slide):
    """A plain image (PNG, JPEG, stripped TIFF) posing as a one-level slide; pixels in memory.

    µm/px comes from TIFF resolution tags when present and plausible, else None."""

    def __init__(self, path: Path, microns_per_pixel: float | None = None) -> None:
        path = Path(path)
        self._pixels: np.ndarray | None = read_rgb(path)
        height, width = self._pixels.shape[:2]
        super().__init__(path, ((width, height),), (1.0,), image_microns_per_pixel(path), None, microns_per_pixel)

    def read(self, x: int, y: int, width: int, height: int, level: int = 0) -> np.ndarray:
        self._check_read(width, height, level)
        if self._pixels is None:
            raise ValueError(f"{self.path}: slide is closed")
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        image_height, image_width = self._pixels.shape[:2]
        left, top = max(x, 0), max(y, 0)
        right, bottom = min(x + width, image_width), min(y + height, image_height)
        if left < right and top < bottom:
            out[top - y : bottom - y, left - x : right - x] = self._pixels[top:bottom, left:right]
        return out

    def close(self) -> None:
        self._pixels = None


def image_microns_per_pixel(path: Path) -> float | None:
    """Mean µm/px of an image file from its first page's TIFF X/YResolution (unit inch by
    default, or cm), as written (check it against PLAUSIBLE_MICRONS_PER_PIXEL); None when the file is no TIFF, has no usable tags, or the
    unit is NONE."""
    try:
        with tifffile.TiffFile(path) as tif:
            tags = tif.pages.first.tags
            unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
            resolutions = [tags[name].value for name in ("XResolution", "YResolution") if name in tags]
    except Exception:  # not a TIFF, or unreadable tags: only the µm/px is lost
        return None
    dividend = {2: 25400.0, 3: 10000.0}.get(unit)  # TIFF ResolutionUnit: 2 inch, 3 cm
    values = [dividend * den / num for num, den in resolutions if num and den] if dividend else []
    return sum(values) / 2 if len(values) == 2 else None


def _classify(path: Path) -> str:
    """What ``path`` holds, from its content: 'empty', 'slide' (OpenSlide detects a format),
    'tiff' (a TIFF OpenSlide does not detect), 'image' (PNG/JPEG) or 'unknown'."""
    try:
        if path.stat().st_size == 0:
            return "empty"
        if openslide.OpenSlide.detect_format(path) is not None:
            return "slide"
        with open(path, "rb") as handle:
            if handle.read(4) in _TIFF_MAGIC:
                return "tiff"
        with Image.open(path, formats=["PNG", "JPEG"]):
            return "image"
    except UnidentifiedImageError:
        return "unknown"
    except OSError as exc:
        raise InputError(f"{path}: cannot read file ({_one_line(exc.strerror or exc, path)})") from exc
    except Exception as exc:  # Pillow/OpenSlide failing on a damaged header
        raise InputError(f"{path}: cannot read slide ({_one_line(exc, path)})") from exc


def open_slide(path: Path, microns_per_pixel: float | None = None) -> Slide:
    """Open ``path`` as an :class:`OpenSlideSlide` when OpenSlide recognises its format (tiled
    or pyramidal files), else as an :class:`ImageSlide` (PNG, JPEG, stripped TIFF).

    ``microns_per_pixel`` (level-0 µm/px) overrides the file's value. Raises InputError, one
    line naming the path, for a missing path, a folder, an empty, truncated or corrupt file,
    and a file that is neither a slide nor an image. A truncated slide fails here, not mid-run:
    the smallest level and a corner of every level are decoded on open.
    """
    path = Path(path)
    if microns_per_pixel is not None and not (math.isfinite(microns_per_pixel) and microns_per_pixel > 0):
        raise InputError(f"{path}: invalid µm/px {microns_per_pixel!r} (expected a positive number)")
    if microns_per_pixel is not None and _plausible(microns_per_pixel) is None:
        log.warning("%s: %.6g µm/px is outside the usual range %s", path, microns_per_pixel, PLAUSIBLE_MICRONS_PER_PIXEL)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a slide file")
    kind = _classify(path)
    if kind == "empty":
        raise InputError(f"{path}: empty file (0 bytes)")
    if kind == "unknown":
        raise InputError(f"{path}: not a slide or image (neither OpenSlide nor Pillow recognises the file)")
    if kind == "tiff":
        try:
            with tifffile.TiffFile(path) as tif:
                tiled = tif.pages.first.is_tiled
        except Exception as exc:  # tifffile raises many kinds
            raise InputError(f"{path}: cannot read slide ({_one_line(exc, path)})") from exc
        if tiled:  # OpenSlide detects every tiled TIFF whose directories it can parse
            raise InputError(f"{path}: cannot read slide (tiled TIFF with unreadable directories: truncated or corrupt)")
    slide = OpenSlideSlide(path, microns_per_pixel) if kind == "slide" else ImageSlide(path, microns_per_pixel)
    log.debug("opened %r (%s µm/px)", slide, slide.microns_per_pixel)
    return slide


def require_microns_per_pixel(slide: Slide) -> float:
    """The slide's level-0 µm/px, or InputError when neither the file nor an override gives it."""
    if slide.microns_per_pixel is None:
        raise InputError(f"{slide.path}: no µm/px in the file's metadata; give it with --mpp")
    return slide.microns_per_pixel




SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide", ".tif", ".tiff", ".png", ".jpg", ".jpeg")
"""File names ``list_slides`` takes from a folder (any case)."""


def list_slides(inputs: Sequence[Path]) -> list[Path]:
    """The slides named by ``inputs``, in order: a slide or image file as it is; a folder: its
    files with a ``SLIDE_SUFFIXES`` name, sorted (not its subfolders); a ``.txt`` file: one
    path a line (relative ones to the list's folder; blank lines and ``#`` comments skipped).
    InputError for a path that does not exist and for an empty folder or list."""
    slides: list[Path] = []
    for path in map(Path, inputs):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(SLIDE_SUFFIXES) and not p.name.startswith("."))
            if not found:
                raise InputError(f"{path}: no slides in this folder ({', '.join(SLIDE_SUFFIXES)})")
            slides.extend(found)
        elif path.suffix.lower() == ".txt" and path.is_file():
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
            listed = [Path(line) if Path(line).is_absolute() else path.parent / line for line in lines if line and not line.startswith("#")]
            if not listed:
                raise InputError(f"{path}: the list names no slide")
            slides.extend(listed)
        elif path.exists():
            slides.append(path)
        else:
            raise InputError(f"{path}: no such file or folder")
    return slides


__all__ = [
    "PLAUSIBLE_MICRONS_PER_PIXEL", "SLIDE_SUFFIXES", "Slide", "OpenSlideSlide", "ImageSlide", "image_microns_per_pixel",
    "list_slides", "open_slide", "require_microns_per_pixel",
]
