"""A labelled training/validation folder on disk.

Layout::

    DATA_DIR/images/<stem>.<png|tif|tiff|jpg|jpeg>   RGB (H&E) images
    DATA_DIR/labels/<stem>.<png|tif|tiff>            instance label maps (0 = background), or
    DATA_DIR/labels/<stem>.<geojson|json>[.gz]       QuPath GeoJSON export of the nuclei
    DATA_DIR/unknown/<stem>.<png|tif|tiff>           optional: where nuclei were not annotated
    DATA_DIR/manifest.json                           optional, see below

A GeoJSON label file (FeatureCollection, Feature, list of features or bare geometry; gzip
allowed) gives one nucleus per Polygon, and per part of a MultiPolygon, in image px as QuPath
writes them (x right, y down, pixel (row r, column c) covering [c, c+1) x [r, r+1)). It is
rasterised to a label map of the image's size by the pixel-centre rule (holes are filled),
in file order: where polygons overlap, the pixel goes to the earlier one. Parts outside the
image are clipped; other geometry types are ignored with a warning.

An ``unknown/`` mask (single-channel, RGB or with alpha) marks with its non-zero
(non-transparent) pixels the regions where nuclei were NOT annotated: training never teaches
them as background. A stem may have at most one file in each of ``images/``, ``labels/`` and
``unknown/``.

``manifest.json`` is a JSON list of objects with at least ``name`` (the stem) and
optionally ``xml_microns_per_pixel`` or ``microns_per_pixel`` (pixel size in µm/px;
the former wins when both are given). Arrays follow the image frame: row = y,
column = x. Every user-caused problem raises :class:`InputError` with a one-line
message naming the offending path.
"""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import shapely
import tifffile
from PIL import Image

from wsi_frgnet.errors import InputError
from wsi_frgnet.geometry.raster import polygons_to_label_map
from wsi_frgnet.io.geojson import GEOJSON_SUFFIXES, is_geojson, read_polygons
from wsi_frgnet.io.images import (
    IMAGE_SUFFIXES,
    LABEL_SUFFIXES,
    _check_input_file,
    _is_tiff,
    _read_pillow,
    _read_tiff,
    read_label_map,
    read_rgb,
)

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
ANNOTATION_SUFFIXES = LABEL_SUFFIXES + GEOJSON_SUFFIXES
"""Every suffix of a file in ``labels/``."""
UNKNOWN_SUFFIXES = LABEL_SUFFIXES
"""Suffixes of the masks in ``unknown/``."""
_MPP_KEYS = ("xml_microns_per_pixel", "microns_per_pixel")


@dataclass(frozen=True)
class LabelledImage:
    """One image of a data folder and, if present, its labels.

    ``label_path``: a label map image or a QuPath GeoJSON file (see the module docstring), or
    None. ``microns_per_pixel`` is the pixel size in µm/px from the manifest, or None.
    ``unknown_path``: the mask of regions where nuclei were not annotated, or None.
    """

    name: str
    image_path: Path
    label_path: Path | None
    microns_per_pixel: float | None
    unknown_path: Path | None = None


# ----------------------------------------------------------------------------- listing


def _matching_suffix(path: Path, suffixes: tuple[str, ...]) -> str | None:
    """The longest of ``suffixes`` that ends ``path``'s name (any case), or None."""
    name = path.name.lower()
    found = [s for s in suffixes if name.endswith(s) and len(name) > len(s)]
    return max(found, key=len) if found else None


def _stem(path: Path, suffixes: tuple[str, ...] | None = None) -> str:
    """``path``'s name without its suffix: the longest matching one of ``suffixes``
    (``a.geojson.gz`` → ``a``), else the last one."""
    suffix = _matching_suffix(path, suffixes) if suffixes else None
    return path.name[: -len(suffix)] if suffix else path.stem


def _files_with_suffixes(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Regular, non-hidden files of ``folder`` whose name ends (any case) with one of
    ``suffixes``, sorted by name."""
    try:
        entries = list(folder.iterdir())
    except OSError as exc:
        raise InputError(f"{folder}: cannot list folder ({exc.strerror or exc})") from exc
    return sorted(
        (
            p
            for p in entries
            if not p.name.startswith(".") and _matching_suffix(p, suffixes) and p.is_file()
        ),
        key=lambda p: p.name,
    )


def _check_folder(folder: Path, what: str) -> Path:
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"{folder}: {what} does not exist")
    if not folder.is_dir():
        raise InputError(f"{folder}: {what} is not a directory")
    return folder


def find_images(folder: Path) -> list[Path]:
    """Image files (``IMAGE_SUFFIXES``, any case, hidden files skipped) of ``folder``,
    sorted by name. InputError if the folder is missing, not a directory or has no images."""
    folder = _check_folder(folder, "image folder")
    images = _files_with_suffixes(folder, IMAGE_SUFFIXES)
    if not images:
        raise InputError(f"{folder}: no images found ({', '.join(IMAGE_SUFFIXES)})")
    return images


def _by_stem(
    files: list[Path], folder: Path, what: str, suffixes: tuple[str, ...] | None = None
) -> dict[str, Path]:
    """Map stem (see :func:`_stem`) -> file; InputError when two files share a stem."""
    out: dict[str, Path] = {}
    for path in files:
        stem = _stem(path, suffixes)
        if stem in out:
            raise InputError(
                f"{folder}: ambiguous {what} '{stem}': both {out[stem].name} "
                f"and {path.name} exist; keep only one"
            )
        out[stem] = path
    return out


def _warn_orphans(folder: Path, files: dict[str, Path], images: dict[str, Path], what: str) -> None:
    orphans = sorted(set(files) - set(images))
    if orphans:
        shown = ", ".join(files[s].name for s in orphans[:5])
        more = f" and {len(orphans) - 5} more" if len(orphans) > 5 else ""
        logger.warning(
            "%s: ignoring %d %s without an image: %s%s", folder, len(orphans), what, shown, more,
        )


def list_labelled_images(data_dir: Path, require_labels: bool = True) -> list[LabelledImage]:
    """List ``data_dir/images`` with matching ``labels/`` files (label maps or GeoJSON),
    optional ``unknown/`` masks and manifest µm/px, sorted by image name.

    With ``require_labels`` every image needs labels of the same stem, else images without
    them get ``label_path=None``. Labels or masks without an image are ignored with a
    warning; two label files (or two masks) of one stem are an InputError.
    """
    data_dir = _check_folder(data_dir, "data folder")
    images_dir = data_dir / "images"
    if not images_dir.is_dir():
        raise InputError(f"{data_dir}: no images/ subfolder (expected images/ and labels/)")
    image_files = _files_with_suffixes(images_dir, IMAGE_SUFFIXES)
    if not image_files:
        raise InputError(
            f"{images_dir}: empty data set (no {', '.join(IMAGE_SUFFIXES)} images)"
        )
    images = _by_stem(image_files, images_dir, "image name")

    labels_dir = data_dir / "labels"
    labels: dict[str, Path] = {}
    if labels_dir.is_dir():
        labels = _by_stem(
            _files_with_suffixes(labels_dir, ANNOTATION_SUFFIXES), labels_dir, "label name", ANNOTATION_SUFFIXES
        )
    elif require_labels:
        raise InputError(f"{data_dir}: no labels/ subfolder (label maps are required)")
    _warn_orphans(labels_dir, labels, images, "label file(s)")

    unknown_dir = data_dir / "unknown"
    unknown: dict[str, Path] = {}
    if unknown_dir.is_dir():
        unknown = _by_stem(_files_with_suffixes(unknown_dir, UNKNOWN_SUFFIXES), unknown_dir, "unknown-region mask")
        _warn_orphans(unknown_dir, unknown, images, "unknown-region mask(s)")

    mpp = _manifest_mpp_by_name(data_dir)
    items: list[LabelledImage] = []
    for stem, image_path in sorted(images.items(), key=lambda kv: kv[1].name):
        label_path = labels.get(stem)
        if label_path is None and require_labels:
            raise InputError(
                f"{image_path}: no label map labels/{stem}.png|.tif|.geojson found"
            )
        items.append(LabelledImage(stem, image_path, label_path, mpp.get(stem), unknown.get(stem)))
    return items


# ----------------------------------------------------------------------------- manifest


def _load_manifest(data_dir: Path) -> tuple[Path, list[Any]] | None:
    """Parsed ``manifest.json`` (path, entries), or None if there is none."""
    path = Path(data_dir) / MANIFEST_NAME
    if not path.exists():
        return None
    if not path.is_file():
        raise InputError(f"{path}: manifest is not a file")
    try:
        entries = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{path}: manifest is not valid JSON ({' '.join(str(exc).split())})") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read manifest ({exc.strerror or exc})") from exc
    if not isinstance(entries, list):
        raise InputError(f"{path}: manifest must be a JSON list of objects with a 'name'")
    return path, entries


def _entry_mpp(entry: dict[str, Any], path: Path, index: int) -> float | None:
    """µm/px of one manifest entry (first of ``_MPP_KEYS`` given), or None."""
    for key in _MPP_KEYS:
        value = entry.get(key)
        if value is None:
            continue
        try:
            if isinstance(value, bool):
                raise ValueError
            mpp = float(value)
        except (TypeError, ValueError):
            mpp = math.nan
        if not math.isfinite(mpp) or mpp <= 0:
            raise InputError(
                f"{path}: entry {index} ('{entry.get('name')}') has invalid {key} {value!r} "
                "(expected a positive number of µm/px)"
            )
        return mpp
    return None


def _manifest_entries(data_dir: Path) -> list[tuple[str, float | None]]:
    """(name, µm/px or None) for every manifest entry; empty if there is no manifest."""
    loaded = _load_manifest(data_dir)
    if loaded is None:
        return []
    path, entries = loaded
    out: list[tuple[str, float | None]] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise InputError(f"{path}: entry {index} is not an object with a string 'name'")
        out.append((entry["name"], _entry_mpp(entry, path, index)))
    return out


def _manifest_mpp_by_name(data_dir: Path) -> dict[str, float]:
    """Manifest µm/px by image stem (entries without one left out)."""
    path = Path(data_dir) / MANIFEST_NAME
    by_name: dict[str, float] = {}
    for name, mpp in _manifest_entries(data_dir):
        if mpp is None:
            continue
        if name in by_name and by_name[name] != mpp:
            raise InputError(
                f"{path}: conflicting µm/px for '{name}' ({by_name[name]} and {mpp})"
            )
        by_name[name] = mpp
    return by_name


def manifest_microns_per_pixel(data_dir: Path) -> float | None:
    """Median pixel size (µm/px) over the manifest entries that give one.

    None if there is no ``manifest.json`` or no entry gives a size; InputError if
    the manifest is not valid JSON or malformed.
    """
    values = [mpp for _, mpp in _manifest_entries(data_dir) if mpp is not None]
    return float(statistics.median(values)) if values else None


# ----------------------------------------------------------------------------- loading


def geojson_label_map(path: Path, shape_hw: tuple[int, int], image_path: Path | None = None) -> np.ndarray:
    """Rasterise a QuPath GeoJSON label file to an int32 (H, W) label map.

    Polygon i (file order; MultiPolygon parts in turn) becomes label i + 1 on the pixels whose
    centre it contains (:func:`wsi_frgnet.geometry.outlines.polygons_to_label_map`; holes are filled,
    overlaps go to the earlier polygon, parts outside the image are clipped). Polygons that
    cover no pixel centre leave their label unused. InputError when no polygon overlaps the
    image ("annotation file does not match its image"); polygons entirely outside it while
    others are inside are dropped with a warning.
    """
    path = Path(path)
    polygons = read_polygons(path, "nucleus", nuclei=True)
    height, width = shape_hw
    frame = shapely.box(0.0, 0.0, float(width), float(height))
    parts = np.asarray(polygons, dtype=object)
    inside = (shapely.intersects(parts, frame) & ~shapely.touches(parts, frame)).tolist()
    outside = inside.count(False)
    where = f" {image_path}" if image_path is not None else ""
    if outside == len(polygons):
        left, top, right, bottom = shapely.total_bounds(parts)
        raise InputError(
            f"{path}: annotation file does not match its image{where}: all {len(polygons)} polygon(s) "
            f"lie outside its {width}x{height} px (they span x {left:g}..{right:g}, y {top:g}..{bottom:g})"
        )
    if outside:
        logger.warning("%s: %d of %d polygon(s) lie outside the %dx%d px image%s; ignored",
                       path, outside, len(polygons), width, height, where)
    rings = [np.asarray(polygon.exterior.coords, dtype=np.float64) if keep else np.empty((0, 2))
             for polygon, keep in zip(polygons, inside)]
    labels = polygons_to_label_map(rings, (height, width))
    if not labels.any():
        raise InputError(
            f"{path}: annotation file does not match its image{where}: no polygon covers a pixel centre"
        )
    return labels


def load_pair(item: LabelledImage) -> tuple[np.ndarray, np.ndarray]:
    """Read ``(rgb uint8 HxWx3, labels int32 HxW)`` for ``item``; a GeoJSON label file is
    rasterised to the image's size (:func:`geojson_label_map`).

    InputError if it has no labels, or the two sizes differ.
    """
    if item.label_path is None:
        raise InputError(f"{item.image_path}: no label map for this image")
    rgb = read_rgb(item.image_path)
    if is_geojson(item.label_path):
        return rgb, geojson_label_map(item.label_path, rgb.shape[:2], item.image_path)
    labels = read_label_map(item.label_path)
    if labels.shape != rgb.shape[:2]:
        lh, lw = labels.shape
        ih, iw = rgb.shape[:2]
        raise InputError(
            f"{item.label_path}: label map is {lw}x{lh} but image {item.image_path} is {iw}x{ih}"
        )
    return rgb, labels


def read_mask(path: Path) -> np.ndarray:
    """A (H, W) bool mask from an image: True where any colour channel is non-zero (and, when
    the image has alpha, the pixel is not transparent). Grey, RGB(A), palette, 1-bit, 16-bit
    and float images are accepted."""
    path = _check_input_file(path)
    array = _read_tiff(path) if _is_tiff(path) else _read_pillow(path, for_rgb=True)
    if array.ndim == 3 and array.shape[-1] not in (1, 2, 3, 4) and array.shape[0] in (1, 2, 3, 4):
        array = np.moveaxis(array, 0, -1)  # planar (C, H, W) TIFF
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4) or 0 in array.shape:
        raise InputError(f"{path}: unsupported mask shape {tuple(array.shape)} (expected HxW, HxWx3 or HxWx4)")
    colour, alpha = (array[..., :-1], array[..., -1]) if array.shape[-1] in (2, 4) else (array, None)
    mask = (colour != 0).any(axis=2)
    if alpha is not None:
        mask &= alpha != 0
    return mask


def load_unknown(item: LabelledImage, image_shape: tuple[int, ...] | None = None) -> np.ndarray | None:
    """The (H, W) bool mask of ``item``'s regions without annotations, or None if it has none.

    ``image_shape``: the image's (H, W, ...) when already read, else taken from its file.
    InputError if the mask cannot be read or its size differs from the image's.
    """
    if item.unknown_path is None:
        return None
    mask = read_mask(item.unknown_path)
    height, width = image_shape[:2] if image_shape is not None else _image_size(item.image_path)[::-1]
    if mask.shape != (height, width):
        mh, mw = mask.shape
        raise InputError(
            f"{item.unknown_path}: unknown-region mask is {mw}x{mh} but image {item.image_path} is {width}x{height}"
        )
    return mask


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image, from its header when possible."""
    path = _check_input_file(path)
    try:
        if _is_tiff(path):
            with tifffile.TiffFile(path) as tif:
                level = tif.series[0].levels[0]
                return int(level.shape[level.axes.index("X")]), int(level.shape[level.axes.index("Y")])
        with Image.open(path) as img:
            return img.size
    except Exception:  # fall back to decoding it, which reports a readable error
        rgb = read_rgb(path)
        return rgb.shape[1], rgb.shape[0]


__all__ = [
    "LabelledImage",
    "find_images",
    "geojson_label_map",
    "list_labelled_images",
    "load_pair",
    "load_unknown",
    "manifest_microns_per_pixel",
    "read_mask",
]


def read_name_list(path: Path) -> list[str]:
    """Stems listed in a text file, one a line; blank lines and ``#`` comments ignored."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read name list ({exc.__class__.__name__})") from exc
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def named_items(items: list[LabelledImage], names_file: Path) -> list[LabelledImage]:
    """The items whose names ``names_file`` lists (:func:`read_name_list`), in ``items``' order;
    InputError naming the listed names that are not among them."""
    names = set(read_name_list(names_file))
    missing = sorted(names - {item.name for item in items})
    if missing:
        raise InputError(f"{names_file}: names not found among the images: {', '.join(missing[:5])}")
    return [item for item in items if item.name in names]


def split_validation(
    items: list[LabelledImage],
    validation: Path | None,
    fraction: float | None,
    seed: int,
) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """(training, validation) items of a data folder.

    ``validation`` may be another data folder (its images are the validation set) or a text
    file naming stems of ``items`` to hold out; otherwise ``fraction`` of the images (at least
    one) is held out at random with ``seed``; with neither, there is no validation set.
    """
    if validation is not None and fraction is not None:
        raise InputError("give either --validation or --validation-fraction, not both")
    if validation is not None:
        validation = Path(validation)
        if validation.is_file():
            held = named_items(items, validation)
            rest = [item for item in items if item not in held]
        else:
            held, rest = list_labelled_images(validation), items
        if not rest:
            raise InputError(f"{validation}: holds out every training image; nothing left to train on")
        return rest, held
    if fraction is not None:
        if not 0.0 < fraction < 1.0:
            raise InputError(f"--validation-fraction {fraction}: must be between 0 and 1")
        if len(items) < 2:
            raise InputError("--validation-fraction needs at least two images")
        count = min(len(items) - 1, max(1, round(fraction * len(items))))
        order = np.random.default_rng(seed).permutation(len(items))
        held_index = set(order[:count].tolist())
        return [it for i, it in enumerate(items) if i not in held_index], [it for i, it in enumerate(items) if i in held_index]
    return items, []
