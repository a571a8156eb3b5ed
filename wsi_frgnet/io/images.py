"""Image files in and out: RGB images, instance label maps, PNG/TIFF writers.

Arrays use the usual image frame: row = y (down), column = x (right); shapes are
``(H, W)`` or ``(H, W, 3)``. Every user-caused failure (missing, unreadable or
malformed file, an output that cannot be written) raises :class:`InputError` with a
one-line message that starts with the offending path.

All writers are atomic: the data go to a hidden temporary file in the destination
folder, which then replaces the destination with :func:`os.replace`, so a reader
never sees a half-written file and a failed write leaves nothing behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import tifffile
from PIL import Image

from wsi_frgnet.errors import InputError
from wsi_frgnet.io.atomic import atomic_write

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
LABEL_SUFFIXES = (".png", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")

_INT32_MAX = int(np.iinfo(np.int32).max)
_UINT16_MAX = int(np.iinfo(np.uint16).max)
# Pillow modes that np.asarray cannot use directly; converted to RGB first.
_PIL_CONVERT_TO_RGB = ("1", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX")


# ----------------------------------------------------------------------------- helpers


def _one_line(text: str, limit: int = 200) -> str:
    """Collapse ``text`` to a single line of at most ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _reason(exc: BaseException) -> str:
    """Short, single-line reason for an exception (falls back to its class name)."""
    if isinstance(exc, OSError) and exc.strerror:
        return _one_line(exc.strerror)
    return _one_line(str(exc)) or type(exc).__name__


def _check_input_file(path: Path) -> Path:
    """Return ``path`` as a Path if it names an existing regular file, else InputError."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    return path


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in TIFF_SUFFIXES


def _read_tiff(path: Path) -> np.ndarray:
    """First series, pyramid level 0, of a TIFF file, with leading unit axes removed."""
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise ValueError("no image data")
            array = tif.series[0].levels[0].asarray()
    except InputError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # tifffile/imagecodecs raise many kinds
        raise InputError(f"{path}: cannot read image ({_reason(exc)})") from exc
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    return array


def _read_pillow(path: Path, *, for_rgb: bool) -> np.ndarray:
    """Decode ``path`` with Pillow into a numpy array (palette etc. handled per use)."""
    try:
        with Image.open(path) as img:
            img.load()
            if for_rgb and img.mode in _PIL_CONVERT_TO_RGB:
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            array = np.asarray(img)
    except MemoryError:
        raise
    except Exception as exc:  # UnidentifiedImageError, truncated data, bombs, ...
        raise InputError(f"{path}: cannot read image ({_reason(exc)})") from exc
    return array


def _to_uint8(array: np.ndarray, path: Path) -> np.ndarray:
    """Scale an intensity array to uint8 (16-bit: /257, so 65535 -> 255)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * np.uint8(255)
    if array.dtype == np.uint16:
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer) and array.size:
        lo, hi = int(array.min()), int(array.max())
        if lo >= 0 and hi <= 255:
            return array.astype(np.uint8)
        if lo >= 0 and hi <= _UINT16_MAX:
            return _to_uint8(array.astype(np.uint16), path)
    if np.issubdtype(array.dtype, np.floating) and array.size:
        finite = np.isfinite(array).all()
        if finite and array.min() >= 0.0 and array.max() <= 1.0:
            return np.round(array * 255.0).astype(np.uint8)
    raise InputError(
        f"{path}: unsupported pixel type {array.dtype} (expected 8- or 16-bit intensities)"
    )


# ----------------------------------------------------------------------------- readers


def read_rgb(path: Path) -> np.ndarray:
    """Read an RGB image as an ``(H, W, 3)`` uint8 array (row = y, column = x).

    PNG/JPEG are decoded with Pillow, TIFF with tifffile (first series, level 0).
    Grey images are replicated to three channels, an alpha channel is dropped and
    16-bit data are scaled to 8 bits. Raises InputError for a missing path, a path
    that is not a file, an unreadable/corrupt file or an unsupported shape.
    """
    path = _check_input_file(path)
    array = _read_tiff(path) if _is_tiff(path) else _read_pillow(path, for_rgb=True)

    if array.ndim == 3 and array.shape[-1] not in (1, 2, 3, 4) and array.shape[0] in (3, 4):
        array = np.moveaxis(array, 0, -1)  # planar (C, H, W) TIFF
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    elif array.ndim == 3 and array.shape[-1] == 2:  # grey + alpha
        array = np.repeat(array[..., :1], 3, axis=2)
    elif array.ndim == 3 and array.shape[-1] == 4:  # RGBA
        array = array[..., :3]
    if array.ndim != 3 or array.shape[-1] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(
            f"{path}: unsupported image shape {tuple(array.shape)} "
            "(expected HxW grey, HxWx3 RGB or HxWx4 RGBA)"
        )
    return np.ascontiguousarray(_to_uint8(array, path))


def read_label_map(path: Path) -> np.ndarray:
    """Read an instance label map as an ``(H, W)`` int32 array (0 = background).

    PNG (8/16-bit grey or palette indices) via Pillow, TIFF via tifffile. Raises
    InputError for multi-channel images, non-integer or negative values, values
    beyond int32, and every error of :func:`read_rgb`'s file checks.
    """
    path = _check_input_file(path)
    array = _read_tiff(path) if _is_tiff(path) else _read_pillow(path, for_rgb=False)

    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise InputError(
            f"{path}: label maps must be single-channel (one integer label per pixel), "
            f"got shape {tuple(array.shape)}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"{path}: label map is empty (shape {tuple(array.shape)})")
    if array.dtype == np.bool_:
        return array.astype(np.int32)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
            raise InputError(f"{path}: label map has non-integer values")
    elif not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{path}: unsupported label pixel type {array.dtype}")
    lo, hi = array.min(), array.max()
    if lo < 0:
        raise InputError(f"{path}: label map has negative values (min {lo})")
    if hi > _INT32_MAX:
        raise InputError(f"{path}: label value {hi} does not fit in int32")
    return np.ascontiguousarray(array.astype(np.int32))


# ----------------------------------------------------------------------------- writers


def _check_suffix(path: Path, allowed: tuple[str, ...], what: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in allowed:
        raise InputError(
            f"{path}: {what} must be written as {' or '.join(allowed)} (got '{suffix or 'no suffix'}')"
        )
    return suffix


def write_png(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as a PNG, atomically.

    Accepts uint8 ``(H, W)`` grey, uint8 ``(H, W, 3)`` RGB, or uint16 ``(H, W)``
    (e.g. label maps; stored as 16-bit grey). A wrong dtype/shape is a programming
    error (ValueError); an unwritable destination is an InputError.
    """
    path = Path(path)
    _check_suffix(path, (".png",), "PNG output")
    array = np.asarray(array)
    ok = (array.dtype == np.uint8 and (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3))) or (
        array.dtype == np.uint16 and array.ndim == 2
    )
    if not ok or 0 in array.shape:
        raise ValueError(
            f"write_png: expected uint8 HxW / HxWx3 or uint16 HxW, got {array.dtype} {array.shape}"
        )
    array = np.ascontiguousarray(array)
    if array.dtype == np.uint16:
        # Native-endian uint16 -> Pillow "I;16" (saved as 16-bit grey PNG).
        image = Image.fromarray(array.astype("<u2", copy=False))
    else:
        image = Image.fromarray(array)

    def write(handle: BinaryIO) -> None:
        image.save(handle, format="PNG")

    atomic_write(path, write)


def write_label_map(path: Path, labels: np.ndarray) -> None:
    """Write an ``(H, W)`` non-negative integer label map, atomically.

    ``.png`` -> 16-bit grey PNG (InputError if a label exceeds 65535; use ``.tif``);
    ``.tif``/``.tiff`` -> int32 TIFF with zlib compression.
    """
    path = Path(path)
    suffix = _check_suffix(path, LABEL_SUFFIXES, "label map")
    labels = np.asarray(labels)
    if labels.ndim != 2 or 0 in labels.shape:
        raise ValueError(f"write_label_map: expected an HxW array, got shape {labels.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise ValueError(f"write_label_map: expected integer labels, got {labels.dtype}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0:
        raise ValueError(f"write_label_map: negative label {lo}")
    if hi > _INT32_MAX:
        raise ValueError(f"write_label_map: label {hi} does not fit in int32")

    if suffix == ".png":
        if hi > _UINT16_MAX:
            raise InputError(
                f"{path}: label {hi} exceeds the 16-bit PNG limit ({_UINT16_MAX}); "
                "write the label map as .tif instead"
            )
        write_png(path, labels.astype(np.uint16))
        return

    data = np.ascontiguousarray(labels.astype(np.int32))

    def write(handle: BinaryIO) -> None:
        tifffile.imwrite(handle, data, compression="zlib", photometric="minisblack")

    atomic_write(path, write)


__all__ = [
    "IMAGE_SUFFIXES",
    "LABEL_SUFFIXES",
    "read_rgb",
    "read_label_map",
    "write_png",
    "write_label_map",
]
