"""Whole-slide segmentation: slide → tiles → model → polygons → merge → GeoJSON.

Frames: *level-0 px* are the slide's full-resolution pixels; *working px* are pixels at the
model's own resolution (its training µm/px). One working px spans ``factor`` level-0 px, with
``factor = model µm/px ÷ slide µm/px``. Tiles are planned and merged in working px; nuclei
leave this module in level-0 px.

Reading tiles (threads), the network (CPU: one stream per share of the cores, each also
post-processing its batches; CUDA: one stream and a post-processing thread) and merging and
writing (the caller's thread) overlap, with a bounded number of batches in flight, so memory
stays bounded whatever the slide size.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import shapely
import torch
from PIL import Image
from shapely import Point, affinity
from tqdm.auto import tqdm

from wsi_frgnet.config import SegmentConfig
from wsi_frgnet.contours import stacked_by_length
from wsi_frgnet.devices import network_executor, network_thread_shares
from wsi_frgnet.errors import InputError
from wsi_frgnet.export import ExportSettings, write_geojson
from wsi_frgnet.inference import LoadedModel, images_to_tensor
from wsi_frgnet.merge import (
    OWNERSHIP_TOLERANCE,
    BorderDeduplicator,
    keep_owned,
    scale,
    translate,
)
from wsi_frgnet.postprocess import Nucleus, decode_nuclei
from wsi_frgnet.slide import Slide, open_slide, require_microns_per_pixel
from wsi_frgnet.tiling import Tile, plan_tiles, region_to_working
from wsi_frgnet.tissue import (
    region_mask_from_geojson,
    tiles_in_polygons,
    tiles_with_tissue,
    tissue_mask,
)

logger = logging.getLogger(__name__)

@dataclass
class SegmentSummary:
    """What one slide cost and gave."""

    slide: Path
    nuclei: int = 0
    tiles: int = 0
    tissue_area_mm2: float = 0.0
    seconds: float = 0.0
    oversized: int = 0  # nuclei reaching further than the context from their centre
    output: Path | None = None


@dataclass
class SlidePlan:
    """Where and how to read a slide at the model's resolution."""

    slide: Slide
    factor: float  # level-0 px per working px
    level: int  # pyramid level read
    tiles: list[Tile]
    roi_polygons: list = field(default_factory=list)  # shapely polygons in working px
    area_mm2: float = 0.0  # tissue (or region) area the tiles cover


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512 BF16 or AMX); emulated bf16 is slower
    than fp32. On MoNuSeg validation bf16 gave the same PQ as fp32 (0.5567 vs 0.5564)."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe is not None and probe() for probe in probes)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a --precision value on ``device`` (None: plain fp32)."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


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


def plan_slide(slide: Slide, model: LoadedModel, config: SegmentConfig) -> SlidePlan:
    """Tiles (in working px) covering the slide's tissue, ROI or bounds."""
    slide_mpp = require_microns_per_pixel(slide)
    model_mpp = model.checkpoint.microns_per_pixel
    if model_mpp is None:
        logger.warning("the model does not record its µm/px: segmenting at the slide's own resolution")
        model_mpp = slide_mpp
    multiple = model.network.config.size_multiple
    if config.tile_size % multiple:
        raise InputError(f"--tile-size {config.tile_size}: this model needs a multiple of {multiple}")
    factor = model_mpp / slide_mpp
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
    tiles = plan_tiles(region_to_working(region_level0, factor), config.tile_size, config.context)
    roi_polygons = []
    if config.roi_geojson is not None:
        polygons = region_mask_from_geojson(config.roi_geojson, offset=offset)
        roi_polygons = [affinity.scale(p, 1 / factor, 1 / factor, origin=(0, 0)) for p in polygons]
        for polygon in roi_polygons:
            shapely.prepare(polygon)
        tiles = tiles_in_polygons(tiles, roi_polygons)
    # Area of the work, mm²: the tissue found, else the region's tile cores.
    area_mm2 = sum(t.core[2] * t.core[3] for t in tiles) * (model_mpp / 1000.0) ** 2
    if config.tissue_mask and tiles:
        thumbnail, thumbnail_downsample = slide.thumbnail(tissue_thumbnail_size(slide.dimensions, slide_mpp, config, slide.level_dimensions))
        mask = tissue_mask(thumbnail)
        tiles = tiles_with_tissue(tiles, mask, thumbnail_downsample / factor)
        area_mm2 = min(area_mm2, float(mask.sum()) * (thumbnail_downsample * slide_mpp / 1000.0) ** 2)
    if not tiles:
        logger.warning("%s: no tissue found in the region; nothing to segment (--no-tissue-mask processes everything)", slide.path)
    return SlidePlan(slide, factor, level, tiles, roi_polygons, area_mm2)


def read_tile(plan: SlidePlan, tile: Tile) -> np.ndarray:
    """The tile's read rectangle as (h, w, 3) uint8 at working resolution (white outside)."""
    x, y, width, height = tile.read
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


class _TileResults:
    """Post-processing of one batch: network outputs → owned nuclei per tile (working px)."""

    def __init__(self, model: LoadedModel, plan: SlidePlan, config: SegmentConfig) -> None:
        self.model, self.plan, self.config = model, plan, config

    def __call__(self, tiles: list[Tile], output) -> tuple[list[tuple[Tile, list[Nucleus]]], int]:
        """(tile, owned nuclei) per tile, and how many of them are oversized."""
        results, oversized = [], 0
        for index, tile in enumerate(tiles):
            nuclei, _ = decode_nuclei(output, index, self.model.network.config, self.model.postprocess, region=_owned_region(tile))
            owned = keep_owned(translate(nuclei, *tile.read[:2]), tile)
            oversized += _count_oversized(owned, self.config.context)
            if self.plan.roi_polygons:
                owned = [n for n in owned if _inside_any(n, self.plan.roi_polygons)]
            results.append((tile, owned))
        return results, oversized


def _owned_region(tile: Tile) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) px of the tile's read window where the centroids it may own lie: its
    core grown by the ownership tolerance (:func:`~wsi_frgnet.merge.keep_owned` decides)."""
    x, y, width, height = tile.core
    left, top = x - tile.read[0] - OWNERSHIP_TOLERANCE, y - tile.read[1] - OWNERSHIP_TOLERANCE
    return left, top, left + width + 2 * OWNERSHIP_TOLERANCE, top + height + 2 * OWNERSHIP_TOLERANCE


def _count_oversized(nuclei: list[Nucleus], context: int) -> int:
    """How many nuclei extend further than ``context`` px (along x or y) from their centre
    (the mean of their vertices). Their tile owns the centre, so such a reach can take them past
    the tile's read window."""
    count = 0
    for _, rings in stacked_by_length([nucleus.polygon[:-1] for nucleus in nuclei]):
        reach = np.abs(rings - rings.mean(axis=1, keepdims=True)).max(axis=(1, 2))
        count += int((reach > context).sum())
    return count


def _inside_any(nucleus: Nucleus, polygons: list) -> bool:
    point = Point(*nucleus.centroid)
    return any(polygon.covers(point) for polygon in polygons)


def iterate_nuclei(
    plan: SlidePlan,
    model: LoadedModel,
    config: SegmentConfig,
    progress: tqdm | None = None,
    summary: SegmentSummary | None = None,
) -> Iterator[Nucleus]:
    """Every nucleus of the planned tiles, once, in level-0 px, streamed tile row by tile row.

    Close the generator (or exhaust it) before closing the slide: closing it stops the
    reading threads. With ``summary``, the count of oversized nuclei is recorded there instead
    of being logged.
    """
    network = model.network
    device = next(network.parameters()).device
    dtype = autocast_dtype(config.precision, device)
    checkpoint = model.checkpoint
    deduplicator = BorderDeduplicator()
    postprocess = _TileResults(model, plan, config)
    tiles_left = iter(plan.tiles)
    shares = network_thread_shares(device)
    readers = ThreadPoolExecutor(config.reader_threads, thread_name_prefix="read")
    engine = network_executor(shares)
    # On CPU each stream post-processes its own batches; on CUDA a thread of its own does,
    # so that the next batch reaches the GPU meanwhile.
    post = ThreadPoolExecutor(1, thread_name_prefix="post") if device.type != "cpu" else None
    in_flight: deque[Future] = deque()  # per batch, in tile order: network job → post-processing job
    depth = max(len(shares) + 2, 2 * config.reader_threads // config.batch_size + 1)
    emitted = oversized = 0

    def run_network(tiles: list[Tile], reads: list[Future]) -> Future:
        pixels = np.stack([read.result() for read in reads])
        tensor = images_to_tensor(pixels, checkpoint.mean, checkpoint.std, device).contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            output = network(tensor)
        if post is not None:
            return post.submit(postprocess, tiles, output)
        done: Future = Future()
        done.set_result(postprocess(tiles, output))
        return done

    try:
        while True:
            while len(in_flight) < depth and (batch := list(islice(tiles_left, config.batch_size))):
                in_flight.append(engine.submit(run_network, batch, [readers.submit(read_tile, plan, tile) for tile in batch]))
            if not in_flight:
                break
            # Merging and writing (the caller's work between items) overlap with the network.
            results, batch_oversized = in_flight.popleft().result().result()
            oversized += batch_oversized
            for tile, owned in results:
                final = deduplicator.add(tile, owned)
                emitted += len(final)
                yield from scale(final, plan.factor)
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(nuclei=emitted, refresh=False)
    finally:
        # Also on errors and early close: no thread may touch the slide after this returns.
        for executor in (readers, engine, post):
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
    yield from scale(deduplicator.flush(), plan.factor)
    if summary is not None:
        summary.oversized = oversized
    elif oversized:
        _warn_oversized(oversized, config)


def _warn_oversized(count: int, config: SegmentConfig) -> None:
    logger.warning(
        "%d nuclei are larger than the tile context (%d px at the model's resolution) and may be cut at tile borders: "
        "raise --context",
        count,
        config.context,
    )


def segment_slide(
    path: Path,
    model: LoadedModel,
    config: SegmentConfig,
    output: Path,
    microns_per_pixel: float | None = None,
    quiet: bool = False,
) -> SegmentSummary:
    """Segment one slide into a QuPath GeoJSON file (atomic; ``.gz`` suffix: gzip)."""
    started = time.monotonic()
    with open_slide(Path(path), microns_per_pixel) as slide:
        plan = plan_slide(slide, model, config)
        slide_mpp = require_microns_per_pixel(slide)
        settings = ExportSettings(
            microns_per_pixel=slide_mpp,
            offset=output_offset(slide, config),
            slide_id=f"{Path(path).name}:{slide.dimensions[0]}x{slide.dimensions[1]}",
        )
        summary = SegmentSummary(slide=Path(path), tiles=len(plan.tiles), tissue_area_mm2=plan.area_mm2, output=Path(output))
        with tqdm(total=len(plan.tiles), desc=Path(path).name, unit="tile", disable=quiet) as progress:
            nuclei = iterate_nuclei(plan, model, config, progress, summary)
            try:
                summary.nuclei = write_geojson(output, nuclei, settings)
            finally:
                nuclei.close()
    if summary.oversized:
        _warn_oversized(summary.oversized, config)
    summary.seconds = time.monotonic() - started
    return summary
