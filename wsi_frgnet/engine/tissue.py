"""Where to look: tissue detection on a thumbnail, and regions of interest from QuPath.

Both filters take tiles planned by :func:`wsi_frgnet.engine.tiling.plan_tiles` (working px) and keep
their order, so the filtered list is still in raster order:

- :func:`tissue_mask` finds tissue on a low-resolution RGB thumbnail (no I/O here: the caller
  reads the thumbnail); :func:`tiles_with_tissue` keeps the tiles whose *core* touches tissue
  and can shrink their reads to the tissue they hold.
  The caller passes ``mask_downsample`` in **working px per mask pixel**: for a thumbnail of
  the whole slide at ``thumbnail_downsample`` level-0 px per thumbnail px and a model at
  ``factor`` level-0 px per working px, that is ``thumbnail_downsample / factor``.
- :func:`region_mask_from_geojson` reads QuPath annotations as shapely polygons in **level-0 px**;
  the caller scales them to working px (``shapely.affinity.scale(p, 1 / factor, 1 / factor,
  origin=(0, 0))``) before :func:`tiles_in_polygons`.

Assumptions of the tissue mask: H&E on glass, background near-white (or transparent / black
where the scanner recorded nothing), no pen marks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import shapely
from scipy import ndimage
from shapely import affinity

from wsi_frgnet.engine.tiling import Tile
from wsi_frgnet.io.geojson import read_polygons

logger = logging.getLogger(__name__)



def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (any finite floats); the single value if all are equal."""
    values = np.asarray(values, dtype=np.float64).ravel()
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return low
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    weight_below = np.cumsum(counts)
    weight_above = weight_below[-1] - weight_below
    sum_below = np.cumsum(counts * centres)
    mean_below = sum_below / np.maximum(weight_below, 1)
    mean_above = (sum_below[-1] - sum_below) / np.maximum(weight_above, 1)
    between = weight_below * weight_above * (mean_below - mean_above) ** 2
    return float(edges[1:][np.argmax(between)])


def tissue_mask(
    thumbnail: np.ndarray,
    *,
    saturation_range: tuple[float, float] = (0.05, 0.10),
    optical_density_threshold: float = 0.35,
    min_object_fraction: float = 1e-4,
    min_object_pixels: int = 25,
    max_hole_fraction: float = 2e-3,
    dilation: int = 2,
) -> np.ndarray:
    """Boolean (height, width) mask of tissue on an RGB(A) uint8 thumbnail (height, width, 3|4).

    A pixel (after a 3x3 mean of the colours) is tissue when its HSV saturation exceeds Otsu's
    threshold of the saturations clamped to ``saturation_range`` (stained tissue is coloured,
    glass is grey-white), or when its mean optical density (log10) exceeds
    ``optical_density_threshold`` (dark, unsaturated tissue). Transparent pixels and near-black
    pixels (no data) are never tissue. Then objects smaller than ``min_object_fraction`` of the
    image or ``min_object_pixels`` (dust, noise) are removed, holes smaller than ``max_hole_fraction`` filled, and the mask dilated by
    ``dilation`` pixels (so that tiles at the tissue's edge are kept). A blank image gives an
    all-False mask.
    """
    image = np.asarray(thumbnail)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"thumbnail of shape {image.shape}: expected (height, width, 3 or 4)")
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        return np.zeros((height, width), dtype=bool)
    # Channel planes (3, height, width): reducing over a leading axis is much faster.
    planes = np.ascontiguousarray(image[..., :3].transpose(2, 0, 1), dtype=np.float32)
    if image.dtype != np.uint8 and planes.max() <= 1.0:
        planes = planes * 255.0
    planes = _mean_3x3(planes)
    brightest = planes.max(axis=0)
    saturation = (brightest - planes.min(axis=0)) / np.maximum(brightest, 1.0)
    optical_density = -np.log10((planes + 1.0) / 256.0).mean(axis=0)
    valid = brightest >= 25.0  # black: no data (some scanners, OpenSlide's transparent fill)
    if image.shape[2] == 4:
        valid &= image[..., 3] > 0
    if not valid.any():
        return np.zeros((height, width), dtype=bool)
    low, high = saturation_range
    saturation_threshold = float(np.clip(otsu_threshold(saturation[valid]), low, high))
    mask = valid & ((saturation > saturation_threshold) | (optical_density > optical_density_threshold))

    area = height * width
    mask = _remove_small(mask, max(min_object_pixels, round(min_object_fraction * area)))
    holes = _remove_small(~mask, max(1, round(max_hole_fraction * area)), keep_border=True)
    mask |= ~holes
    if dilation > 0 and mask.any():
        mask = ndimage.binary_dilation(mask, iterations=dilation)
    return mask


def _mean_3x3(planes: np.ndarray) -> np.ndarray:
    """3x3 mean of each (height, width) plane, edges repeated (sums of shifted views: several
    times faster than a general uniform filter)."""
    padded = np.pad(planes, ((0, 0), (1, 1), (1, 1)), mode="edge")
    rows = padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]
    return (rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]) / np.float32(9.0)


def _remove_small(mask: np.ndarray, min_pixels: int, keep_border: bool = False) -> np.ndarray:
    """``mask`` without its 8-connected components of fewer than ``min_pixels`` pixels
    (``keep_border``: components touching the image border are always kept)."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes >= min_pixels
    if keep_border:
        border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
        keep[np.unique(border)] = True
    keep[0] = False
    return keep[labels]


GLASS_LEVEL = 220  # RGB (0-255): pixels with every channel this bright are glass, not tissue


def tissue_rgb_mean(images: Iterable[np.ndarray], step: int = 7) -> tuple[float, float, float]:
    """Mean RGB (each in [0, 1]) of the tissue pixels of (H, W, 3) uint8 images, every
    ``step``-th pixel; glass (every channel >= ``GLASS_LEVEL``) left out. All glass: the mean of
    every pixel. Used to align a new lab's colours with a model's training data."""
    samples = [np.asarray(image).reshape(-1, 3)[::step] for image in images]
    if not samples:
        raise ValueError("no images to take the mean of")
    pixels = np.concatenate(samples)
    tissue = pixels[pixels.min(axis=1) < GLASS_LEVEL]
    chosen = tissue if len(tissue) else pixels
    return tuple(float(v) for v in chosen.mean(axis=0) / 255.0)


def tiles_with_tissue(
    tiles: Sequence[Tile],
    mask: np.ndarray,
    mask_downsample: float,
    mask_origin: tuple[float, float] = (0.0, 0.0),
    trim_to: int | None = None,
) -> list[Tile]:
    """The tiles whose core overlaps at least one tissue pixel of ``mask``, in their order.

    ``mask_downsample``: working px per mask pixel; mask pixel (r, c) covers working px
    [ox + c * d, ox + (c + 1) * d) x [oy + r * d, oy + (r + 1) * d) with d = mask_downsample and
    (ox, oy) = ``mask_origin``, the working-px position of the mask's top-left corner (0, 0 for a
    thumbnail of the whole slide). Tiles whose core lies outside the mask are dropped.

    ``trim_to`` (a multiple of the network's size multiple): each kept tile reads only the
    bounding box of its core's tissue grown by the tile's context, its read rectangle shrunk by
    multiples of ``trim_to`` from each side, so that every place keeps its position modulo the network's
    strides (and its outlines). Parts of a core farther than the context from its tissue are
    then not looked at, as tiles without tissue are not.
    """
    if mask_downsample <= 0:
        raise ValueError(f"mask_downsample {mask_downsample}: must be positive")
    mask = np.asarray(mask, dtype=bool)
    if not tiles:
        return []
    height, width = mask.shape
    integral = np.zeros((height + 1, width + 1), dtype=np.int64)
    integral[1:, 1:] = mask.cumsum(axis=0).cumsum(axis=1)
    origin_x, origin_y = mask_origin
    cores = np.array([tile.core for tile in tiles], dtype=np.float64)  # (n, 4) x, y, width, height
    col0 = np.clip(np.floor((cores[:, 0] - origin_x) / mask_downsample), 0, width).astype(np.int64)
    col1 = np.clip(np.ceil((cores[:, 0] + cores[:, 2] - origin_x) / mask_downsample), 0, width).astype(np.int64)
    row0 = np.clip(np.floor((cores[:, 1] - origin_y) / mask_downsample), 0, height).astype(np.int64)
    row1 = np.clip(np.ceil((cores[:, 1] + cores[:, 3] - origin_y) / mask_downsample), 0, height).astype(np.int64)
    count = integral[row1, col1] - integral[row0, col1] - integral[row1, col0] + integral[row0, col0]
    keep = (col1 > col0) & (row1 > row0) & (count > 0)
    if not trim_to:
        return [tile for tile, kept in zip(tiles, keep) if kept]
    trimmed = []
    for i in np.flatnonzero(keep):
        tile = tiles[i]
        window = mask[row0[i] : row1[i], col0[i] : col1[i]]
        rows, columns = np.flatnonzero(window.any(axis=1)), np.flatnonzero(window.any(axis=0))
        core_x, core_y, core_width, core_height = tile.core
        tissue_x0 = max(core_x, origin_x + (col0[i] + columns[0]) * mask_downsample)
        tissue_x1 = min(core_x + core_width, origin_x + (col0[i] + columns[-1] + 1) * mask_downsample)
        tissue_y0 = max(core_y, origin_y + (row0[i] + rows[0]) * mask_downsample)
        tissue_y1 = min(core_y + core_height, origin_y + (row0[i] + rows[-1] + 1) * mask_downsample)
        x, width_read = _trimmed_span(tile.read[0], tile.read[2], tissue_x0 - tile.context, tissue_x1 + tile.context, trim_to)
        y, height_read = _trimmed_span(tile.read[1], tile.read[3], tissue_y0 - tile.context, tissue_y1 + tile.context, trim_to)
        trimmed.append(replace(tile, read=(x, y, width_read, height_read)))
    return trimmed


def _trimmed_span(start: int, length: int, wanted_start: float, wanted_end: float, multiple: int) -> tuple[int, int]:
    """(start, length) of the span [start, start + length) shrunk by whole ``multiple``s from
    either end while still covering [wanted_start, wanted_end) (a non-empty part of the span)."""
    cut_before = max(0, math.floor((wanted_start - start) / multiple)) * multiple
    cut_after = max(0, math.floor((start + length - wanted_end) / multiple)) * multiple
    return start + cut_before, length - cut_before - cut_after


def region_mask_from_geojson(path: Path, offset: tuple[float, float] = (0.0, 0.0)) -> list[shapely.Polygon]:
    """Polygons (level-0 px) of the annotations in a QuPath GeoJSON export (see
    ``annotations.read_polygons``). ``offset`` (x, y) is added to every coordinate: QuPath
    shows slides that declare OpenSlide bounds cropped to them, so pass the bounds' (x, y) to
    turn such coordinates into level-0 px."""
    polygons = read_polygons(path, "annotation")
    dx, dy = offset
    if dx or dy:
        polygons = [affinity.translate(polygon, dx, dy) for polygon in polygons]
    return polygons


def tiles_in_polygons(tiles: Sequence[Tile], polygons_working: Sequence[shapely.Geometry]) -> list[Tile]:
    """The tiles whose core shares area with at least one polygon (working px), in their order.

    Touching a polygon only along an edge or at a corner does not count.
    """
    tiles = list(tiles)
    polygons = [p for p in polygons_working if p is not None and not p.is_empty]
    if not tiles or not polygons:
        return []
    boxes = shapely.box(*np.array([(x, y, x + w, y + h) for x, y, w, h in (t.core for t in tiles)], dtype=np.float64).T)
    tree = shapely.STRtree(polygons)
    box_index, polygon_index = tree.query(boxes, predicate="intersects")
    if box_index.size == 0:
        return []
    touching = shapely.touches(boxes[box_index], np.asarray(tree.geometries)[polygon_index])
    wanted = set(box_index[~touching].tolist())
    return [tile for i, tile in enumerate(tiles) if i in wanted]
