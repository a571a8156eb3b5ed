"""A labelled training/validation folder on disk.

Layout::

    DATA_DIR/images/<stem>.<png|tif|tiff|jpg|jpeg>   RGB (H&E) images
    DATA_DIR/labels/<stem>.<png|tif|tiff>            instance label maps (0 = background)
    DATA_DIR/manifest.json                           optional, see below

``manifest.json`` is a JSON list of objects with at least ``name`` (the stem) and
optionally ``xml_microns_per_pixel`` or ``microns_per_pixel`` (pixel size in µm/px;
the former wins when both are given). Arrays follow the image frame: row = y,
column = x. Every user-caused problem raises :class:`InputError` with a one-line
message naming the offending path.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .images import IMAGE_SUFFIXES, LABEL_SUFFIXES, read_label_map, read_rgb

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
_MPP_KEYS = ("xml_microns_per_pixel", "microns_per_pixel")


@dataclass(frozen=True)
class LabelledImage:
    """One image of a data folder and, if present, its instance label map.

    ``microns_per_pixel`` is the pixel size in µm/px from the manifest, or None.
    """

    name: str
    image_path: Path
    label_path: Path | None
    microns_per_pixel: float | None


# ----------------------------------------------------------------------------- listing


def _files_with_suffixes(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Regular, non-hidden files of ``folder`` whose suffix (any case) is in
    ``suffixes``, sorted by name."""
    try:
        entries = list(folder.iterdir())
    except OSError as exc:
        raise InputError(f"{folder}: cannot list folder ({exc.strerror or exc})") from exc
    return sorted(
        (
            p
            for p in entries
            if not p.name.startswith(".") and p.suffix.lower() in suffixes and p.is_file()
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


def _by_stem(files: list[Path], folder: Path, what: str) -> dict[str, Path]:
    """Map stem -> file; InputError when two files share a stem."""
    out: dict[str, Path] = {}
    for path in files:
        if path.stem in out:
            raise InputError(
                f"{folder}: ambiguous {what} '{path.stem}': both {out[path.stem].name} "
                f"and {path.name} exist; keep only one"
            )
        out[path.stem] = path
    return out


def list_labelled_images(data_dir: Path, require_labels: bool = True) -> list[LabelledImage]:
    """List ``data_dir/images`` with matching ``labels/`` files and manifest µm/px,
    sorted by image name.

    With ``require_labels`` every image needs a label map of the same stem, else
    images without one get ``label_path=None``. Label maps without an image are
    ignored with a warning.
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
        labels = _by_stem(_files_with_suffixes(labels_dir, LABEL_SUFFIXES), labels_dir, "label name")
    elif require_labels:
        raise InputError(f"{data_dir}: no labels/ subfolder (label maps are required)")

    orphans = sorted(set(labels) - set(images))
    if orphans:
        shown = ", ".join(labels[s].name for s in orphans[:5])
        more = f" and {len(orphans) - 5} more" if len(orphans) > 5 else ""
        logger.warning(
            "%s: ignoring %d label map(s) without an image: %s%s",
            labels_dir, len(orphans), shown, more,
        )

    mpp = _manifest_mpp_by_name(data_dir)
    items: list[LabelledImage] = []
    for stem, image_path in sorted(images.items(), key=lambda kv: kv[1].name):
        label_path = labels.get(stem)
        if label_path is None and require_labels:
            raise InputError(
                f"{image_path}: no label map labels/{stem}.png|.tif found"
            )
        items.append(LabelledImage(stem, image_path, label_path, mpp.get(stem)))
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
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
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


def load_pair(item: LabelledImage) -> tuple[np.ndarray, np.ndarray]:
    """Read ``(rgb uint8 HxWx3, labels int32 HxW)`` for ``item``.

    InputError if it has no label map or the two sizes differ.
    """
    if item.label_path is None:
        raise InputError(f"{item.image_path}: no label map for this image")
    rgb = read_rgb(item.image_path)
    labels = read_label_map(item.label_path)
    if labels.shape != rgb.shape[:2]:
        lh, lw = labels.shape
        ih, iw = rgb.shape[:2]
        raise InputError(
            f"{item.label_path}: label map is {lw}x{lh} but image {item.image_path} is {iw}x{ih}"
        )
    return rgb, labels


__all__ = [
    "LabelledImage",
    "find_images",
    "list_labelled_images",
    "manifest_microns_per_pixel",
    "load_pair",
]


def read_name_list(path: Path) -> list[str]:
    """Stems listed in a text file, one a line; blank lines and ``#`` comments ignored."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read name list ({exc.__class__.__name__})") from exc
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


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
            names = read_name_list(validation)
            known = {item.name for item in items}
            missing = sorted(set(names) - known)
            if missing:
                raise InputError(f"{validation}: names not found among the training images: {', '.join(missing[:5])}")
            held = [item for item in items if item.name in names]
            rest = [item for item in items if item.name not in names]
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
