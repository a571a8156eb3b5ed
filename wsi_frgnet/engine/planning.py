"""Where and how to read a slide at the model's resolution: the tile plan, and reading a tile.

Frames: *level-0 px* are the slide's full-resolution pixels; *working px* are pixels at the
model's own resolution (its training µm/px). One working px spans ``factor`` level-0 px, with
``factor = model µm/px ÷ slide µm/px``. Used by ``segment`` (the pipeline) and by fine-tuning,
so that both see exactly the same tiles.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import shapely
from PIL import Image
from shapely import affinity

from wsi_frgnet.config import SegmentConfig
from wsi_frgnet.engine.colour import ColourAlignment, align_colours
from wsi_frgnet.engine.inference import LoadedModel
from wsi_frgnet.engine.tiling import Tile, plan_tiles, region_to_working
from wsi_frgnet.engine.tissue import (
    region_mask_from_geojson,
    tiles_in_polygons,
    tiles_with_tissue,
    tissue_mask,
)
from wsi_frgnet.errors import InputError
from wsi_frgnet.io.slide import Slide, require_microns_per_pixel

logger = logging.getLogger(__name__)


@dataclass
class SlidePlan:
    """Where and how to read a slide at the model's resolution."""

    slide: Slide
    factor: float  # level-0 px per working px
    level: int  # pyramid level read
    tiles: list[Tile]
    input_mean: tuple[float, ...]  # the network input's normalisation mean (RGB in [0, 1])
    roi_polygons: list = field(default_factory=list)  # shapely polygons in working px
    area_mm2: float = 0.0  # tissue (or region) area the tiles cover
    thumbnail: np.ndarray | None = None  # the tissue mask's thumbnail (RGB), when one was made
    thumbnail_downsample: float = 1.0  # level-0 px per thumbnail px
    tissue: np.ndarray | None = None  # the tissue mask (thumbnail px), when one was made
    colour: ColourAlignment | None = None  # how input_mean was aligned with the slide's colours, when it was


def _clip(rect: tuple[float, float, float, float], bounds: tuple[int, int, int, int]) -> tuple[float, float, float, float] | None:
    """Intersection of two (x, y, width, height) rectangles, or None when they do not overlap."""
    x0, y0 = max(rect[0], bounds[0]), max(rect[1], bounds[1])
    x1, y1 = min(rect[0] + rect[2], bounds[0] + bounds[2]), min(rect[1] + rect[3], bounds[1] + bounds[3])
    return (x0, y0, x1 - x0, y1 - y0) if x1 > x0 and y1 > y0 else None


def output_offset(slide: Slide, config: SegmentConfig) -> tuple[float, float]:
    """Level-0 px subtracted from output coordinates: OpenSlide's bounds when asked (QuPath's frame)."""
    return (float(slide.bounds[0]), float(slide.bounds[1])) if config.subtract_bounds else (0.0, 0.0)


def tissue_thumbnail_size(
    dimensions: tuple[int, int],
    microns_per_pixel: float,
    config: SegmentConfig,
    level_dimensions: tuple[tuple[int, int], ...] = (),
) -> int:
    """Longer side (px) of the thumbnail the tissue mask is computed on: the slide at
    ``config.tissue_microns_per_pixel``, kept between 256 px and ``config.thumbnail_size``; or,
    when a pyramid level is up to 2x coarser than that (and at least 256 px), that level's
    longer side, so that the level is read as it is, without resampling a larger one."""
    at_resolution = math.ceil(max(dimensions) * microns_per_pixel / config.tissue_microns_per_pixel)
    size = min(config.thumbnail_size, max(256, at_resolution))
    level_sides = [max(level) for level in level_dimensions if max(size / 2, 256) <= max(level) <= size]
    return max(level_sides, default=size)


def plan_slide(slide: Slide, model: LoadedModel, config: SegmentConfig, anchored: bool = True, trim: bool = True) -> SlidePlan:
    """Tiles (in working px) covering the slide's tissue, ROI or bounds (the tile layout left
    open in ``config`` is the model's device's, :meth:`SegmentConfig.for_device`); ``anchored``:
    see :func:`~wsi_frgnet.engine.tiling.plan_tiles`; ``trim``: tiles the region's right or
    bottom edge cuts read only what their core needs (False: every read is ``tile_size`` square)."""
    config = config.for_device(next(model.network.parameters()).device.type)
    slide_mpp = require_microns_per_pixel(slide)
    if model.checkpoint.microns_per_pixel is None:
        logger.warning("the model does not record its µm/px: segmenting at the slide's own resolution")
    working_mpp = model.checkpoint.working_microns_per_pixel(slide_mpp)
    if working_mpp != model.checkpoint.microns_per_pixel and model.checkpoint.microns_per_pixel is not None:
        logger.info("%s: %.3g µm/px; segmenting at %.3g µm/px (the model's range: %.3g-%.3g)", slide.path, slide_mpp, working_mpp,
                    model.checkpoint.microns_per_pixel, model.checkpoint.coarsest_microns_per_pixel)
    multiple = model.network.config.size_multiple
    if config.tile_size % multiple:
        raise InputError(f"--tile-size {config.tile_size}: this model needs a multiple of {multiple}")
    factor = working_mpp / slide_mpp
    level = slide.best_level_for_downsample(factor)
    # ROIs are given in the output's frame: level-0 px minus the bounds offset when it is on.
    offset = output_offset(slide, config)
    if config.roi is not None:
        x, y, width, height = config.roi
        if width <= 0 or height <= 0:
            raise InputError(f"--roi {' '.join(map(str, config.roi))}: width and height must be positive")
        region_level0 = _clip((x + offset[0], y + offset[1], width, height), slide.bounds)
        if region_level0 is None:
            raise InputError(f"--roi {' '.join(map(str, config.roi))}: lies outside the slide {slide.path}")
    else:
        region_level0 = slide.bounds
    tiles = plan_tiles(region_to_working(region_level0, factor), config.tile_size, config.context, anchored, multiple if trim else None)
    roi_polygons = []
    if config.roi_geojson is not None:
        polygons = region_mask_from_geojson(config.roi_geojson, offset=offset)
        roi_polygons = [affinity.scale(p, 1 / factor, 1 / factor, origin=(0, 0)) for p in polygons]
        for polygon in roi_polygons:
            shapely.prepare(polygon)
        tiles = tiles_in_polygons(tiles, roi_polygons)
    # Area of the work, mm²: the tissue found, else the region's tile cores.
    area_mm2 = sum(t.core[2] * t.core[3] for t in tiles) * (working_mpp / 1000.0) ** 2
    thumbnail = None
    if (config.tissue_mask or config.colour_alignment) and tiles:
        thumbnail, thumbnail_downsample = slide.thumbnail(tissue_thumbnail_size(slide.dimensions, slide_mpp, config, slide.level_dimensions))
    # The whole slide's colours, whatever the region: an ROI is read as in a whole-slide run.
    colour = align_colours(model.checkpoint.mean, model.checkpoint.data_mean, [thumbnail]) if config.colour_alignment and thumbnail is not None else None
    if config.tissue_mask and thumbnail is not None:
        mask = tissue_mask(thumbnail)
        # Reads trimmed to the tissue in quarter-tile steps: a few distinct input shapes (each new
        # shape costs the network's kernels memory and set-up) for most of the saving of 32 px steps.
        step = max(multiple, config.tile_size // 4 // multiple * multiple)
        tiles = tiles_with_tissue(tiles, mask, thumbnail_downsample / factor, trim_to=step if trim else None)
        area_mm2 = min(area_mm2, float(mask.sum()) * (thumbnail_downsample * slide_mpp / 1000.0) ** 2)
    if not tiles:
        area_mm2 = 0.0  # the mask's tissue lies outside the region, if anywhere
        logger.warning("%s: no tissue found in the region; nothing to segment (--no-tissue-mask processes everything)", slide.path)
    input_mean = model.checkpoint.mean if colour is None else colour.normalisation_mean
    plan = SlidePlan(slide, factor, level, tiles, input_mean, roi_polygons, area_mm2, colour=colour)
    if colour is not None:
        logger.debug("%s: mean tissue RGB %s against the model's %s", slide.path, colour.tissue_mean, colour.data_mean)
    if config.tissue_mask and plan.tiles:
        plan.thumbnail, plan.thumbnail_downsample, plan.tissue = thumbnail, thumbnail_downsample, mask
    return plan


def read_tile(plan: SlidePlan, tile: Tile) -> np.ndarray:
    """The tile's read rectangle as (h, w, 3) uint8 at working resolution (white outside)."""
    return read_region(plan, tile.read)


def read_region(plan: SlidePlan, rect: tuple[int, int, int, int]) -> np.ndarray:
    """A rectangle (x, y, width, height) in working px as (height, width, 3) uint8 RGB at
    working resolution, white outside the slide."""
    x, y, width, height = (int(value) for value in rect)
    slide, factor, level = plan.slide, plan.factor, plan.level
    downsample = slide.level_downsamples[level]
    x0, y0 = x * factor, y * factor  # level-0 px
    left, top = math.floor(x0), math.floor(y0)
    scale = factor / downsample  # level px per working px
    if abs(scale - 1.0) < 1e-6 and x0 == left and y0 == top:
        return slide.read(left, top, width, height, level)
    level_width = math.ceil(width * scale + (x0 - left) / downsample) + 1
    level_height = math.ceil(height * scale + (y0 - top) / downsample) + 1
    region = slide.read(left, top, level_width, level_height, level)
    offset_x, offset_y = (x0 - left) / downsample, (y0 - top) / downsample
    box = (offset_x, offset_y, offset_x + width * scale, offset_y + height * scale)
    return np.asarray(Image.fromarray(region).resize((width, height), Image.Resampling.BILINEAR, box=box))
