"""Whole-slide segmentation: slide → tiles → model → polygons → merge → GeoJSON.

Frames: tiles are planned (:mod:`~wsi_frgnet.engine.planning`) and merged in working px, the
pixels of the model's resolution; nuclei leave this module in level-0 px of the slide.

Reading tiles (threads), the network (CPU: one stream per share of the cores, each also
post-processing its batches; CUDA: one stream and a post-processing thread) and merging and
writing (the caller's thread) overlap, with a bounded number of batches in flight, so memory
stays bounded whatever the slide size.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import orjson
import torch
from shapely import Point
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from wsi_frgnet import __version__
from wsi_frgnet.config import SegmentConfig, config_to_dict
from wsi_frgnet.engine.decode import decode_batch
from wsi_frgnet.engine.devices import (
    autocast_dtype,
    core_count,
    network_executor,
    network_thread_shares,
)
from wsi_frgnet.engine.export import ExportSettings, write_geojson
from wsi_frgnet.engine.inference import LoadedModel, images_to_tensor
from wsi_frgnet.engine.journal import TileJournal, journal_path
from wsi_frgnet.engine.merge import (
    OWNERSHIP_TOLERANCE,
    BorderDeduplicator,
    keep_owned,
    scale,
    translate,
)
from wsi_frgnet.engine.mirrors import run_network
from wsi_frgnet.engine.objects import ObjectMaker, ObjectSettings
from wsi_frgnet.engine.overlaps import resolve_overlaps
from wsi_frgnet.engine.planning import (
    SlidePlan,
    output_offset,
    plan_slide,
    read_region,
    read_tile,
)
from wsi_frgnet.engine.qc import QcCollector
from wsi_frgnet.engine.report import write_run_report
from wsi_frgnet.engine.tiling import Tile
from wsi_frgnet.errors import InputError
from wsi_frgnet.geometry.outlines import stacked_by_length
from wsi_frgnet.io.atomic import remove_stale_temporaries
from wsi_frgnet.io.geojson import geojson_suffix
from wsi_frgnet.io.images import write_png
from wsi_frgnet.io.slide import open_slide, require_microns_per_pixel
from wsi_frgnet.model.model_file import file_sha256
from wsi_frgnet.nucleus import Nucleus

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
    geojson_seconds: float = 0.0  # until the GeoJSON was written (without the QC picture and report)


class _TileResults:
    """Post-processing of one batch: network outputs → owned nuclei per tile (working px)."""

    def __init__(self, model: LoadedModel, plan: SlidePlan, config: SegmentConfig) -> None:
        self.model, self.plan, self.config = model, plan, config

    def __call__(self, tiles: list[Tile], output) -> list[tuple[Tile, list[Nucleus], int]]:
        """(tile, owned nuclei, how many of them are oversized) per tile."""
        results = []
        decoded = decode_batch(output, self.model.network.config, self.model.postprocess, regions=[_owned_region(tile) for tile in tiles])
        for tile, (nuclei, _) in zip(tiles, decoded):
            owned = resolve_overlaps(keep_owned(translate(nuclei, *tile.read[:2]), tile))
            oversized = _count_oversized(owned, self.config.context)
            if self.plan.roi_polygons:
                owned = [n for n in owned if _inside_any(n, self.plan.roi_polygons)]
            results.append((tile, owned, oversized))
        return results


def _owned_region(tile: Tile) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) px of the tile's read window where the centroids it may own lie: its
    core grown by the ownership tolerance (:func:`~wsi_frgnet.engine.merge.keep_owned` decides)."""
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
    journal: TileJournal | None = None,
) -> Iterator[Nucleus]:
    """Every nucleus of the planned tiles, once, in level-0 px, streamed tile row by tile row,
    measured, and with its cell when ``config.cell_expansion`` > 0.

    Close the generator (or exhaust it) before closing the slide: closing it stops the
    reading threads. With ``summary``, the count of oversized nuclei is recorded there instead
    of being logged. With ``journal``, tiles it holds are replayed from it instead of run, and
    every tile run is added to it.
    """
    network = model.network
    device = next(network.parameters()).device
    dtype = autocast_dtype(config.precision, device)
    checkpoint = model.checkpoint
    deduplicator = BorderDeduplicator()
    model_mpp = plan.factor * plan.slide.microns_per_pixel if plan.slide.microns_per_pixel else None
    objects = ObjectMaker(
        lambda rect: read_region(plan, rect),
        ObjectSettings(expansion=config.cell_expansion / model_mpp if model_mpp else 0.0,
                       constrain_scale=config.cell_constrain_scale, microns_per_pixel=model_mpp, measure=config.measure),
    )
    postprocess = _TileResults(model, plan, config)
    shares = network_thread_shares(device)
    reader_threads = config.reader_threads or core_count()
    readers = ThreadPoolExecutor(reader_threads, thread_name_prefix="read")
    engine = network_executor(shares)
    # On CPU each stream post-processes its own batches; on CUDA a pool of threads, one per
    # core left (numpy, shapely and torch release the GIL for most of it), does, so that the
    # next batches reach the GPU meanwhile. Results are taken in tile order all the same.
    post_threads = max(1, core_count() - 2) if device.type != "cpu" else 0
    post = ThreadPoolExecutor(post_threads, thread_name_prefix="post") if post_threads else None
    in_flight: deque[Future] = deque()  # per batch, in tile order: network job → post-processing job
    depth = max(len(shares) + 2, 2 * reader_threads // config.batch_size + 1, 2 * post_threads)
    emitted = oversized = 0

    def run_batch(tiles: list[Tile], reads: list[Future]) -> Future:
        pixels = _stack_padded([read.result() for read in reads])
        tensor = images_to_tensor(pixels, plan.input_mean, checkpoint.std, device)
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            output = run_network(network, tensor, config.tta)
        if post is not None:
            return post.submit(postprocess, tiles, output)
        done: Future = Future()
        done.set_result(postprocess(tiles, output))
        return done

    done = journal.done if journal is not None else {}
    tiles_left = (tile for tile in plan.tiles if tile.index not in done)
    computed: deque[tuple[Tile, list[Nucleus], int]] = deque()

    def submit() -> None:
        while len(in_flight) < depth and (batch := list(islice(tiles_left, config.batch_size))):
            in_flight.append(engine.submit(run_batch, batch, [readers.submit(read_tile, plan, tile) for tile in batch]))

    def next_computed() -> tuple[Tile, list[Nucleus], int]:
        while not computed:
            submit()
            results = in_flight.popleft().result().result()
            if journal is not None:
                for tile, owned, tile_oversized in results:
                    journal.add(tile.index, owned, tile_oversized)
            computed.extend(results)
        return computed.popleft()

    try:
        for tile in plan.tiles:
            submit()  # keep the network busy while journalled tiles are replayed
            if tile.index in done:
                owned, tile_oversized = done[tile.index]
            else:
                computed_tile, owned, tile_oversized = next_computed()
                assert computed_tile.index == tile.index, "tiles came back out of order"
            oversized += tile_oversized
            # Merging and writing (the caller's work between items) overlap with the network.
            made = objects.add(deduplicator.add(tile, owned), deduplicator.frontier)
            emitted += len(made)
            yield from scale(made, plan.factor)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(nuclei=emitted, refresh=False)
    finally:
        # Also on errors and early close: no thread may touch the slide after this returns.
        for executor in (readers, engine, post):
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
    yield from scale(objects.add(deduplicator.flush(), math.inf) + objects.flush(), plan.factor)
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
    table: Path | None = None,
    qc: bool = False,
    restart: bool = False,
) -> SegmentSummary:
    """Segment one slide into a QuPath GeoJSON file (atomic; ``.gz`` suffix: gzip), with its run
    report beside it (:func:`run_report_path`); ``table``: also a CSV row per object; ``qc``:
    also the QC picture (:func:`qc_picture_path`).

    Resumable: the tiles done are journalled beside the output (:mod:`~wsi_frgnet.engine.journal`);
    the same call after an interruption continues from them, and gives the same file.
    ``restart``: forget any journal and start over. Temporary files an interrupted run left
    beside ``output`` are removed. A tile layout left open in ``config`` is that of the model's
    device (:meth:`SegmentConfig.for_device`)."""
    started = time.monotonic()
    config = config.for_device(next(model.network.parameters()).device.type)
    output = Path(output)
    if not output.parent.is_dir():
        raise InputError(f"{output}: cannot write, output folder {output.parent} does not exist")
    remove_stale_temporaries(output)
    with open_slide(Path(path), microns_per_pixel) as slide:
        plan = plan_slide(slide, model, config)
        slide_mpp = require_microns_per_pixel(slide)
        settings = ExportSettings(
            microns_per_pixel=slide_mpp,
            offset=output_offset(slide, config),
            slide_id=f"{Path(path).name}:{slide.dimensions[0]}x{slide.dimensions[1]}",
        )
        summary = SegmentSummary(slide=Path(path), tiles=len(plan.tiles), tissue_area_mm2=plan.area_mm2, output=output)
        collector = _qc_collector(plan, config) if qc else None
        journal = TileJournal(journal_path(output), _run_identity(Path(path), slide_mpp, model, config, plan), fresh=restart)
        # Log lines go above the bar, not through it.
        with tqdm(total=len(plan.tiles), desc=Path(path).name, unit="tile", disable=quiet) as progress, logging_redirect_tqdm():
            nuclei = iterate_nuclei(plan, model, config, progress, summary, journal)
            stream = nuclei if collector is None else _observed(nuclei, collector)
            try:
                summary.nuclei = write_geojson(output, stream, settings, table)
            finally:
                nuclei.close()
                journal.close()
            progress.set_postfix(nuclei=summary.nuclei)  # as written (repeats and degenerate polygons left out)
            summary.geojson_seconds = time.monotonic() - started
            if collector is not None:
                picture = collector.picture()
                write_png(qc_picture_path(output), picture)
    if summary.oversized:
        _warn_oversized(summary.oversized, config)
    summary.seconds = time.monotonic() - started
    write_run_report(run_report_path(output), summary, plan, model, config, slide_mpp, table, qc_picture_path(output) if qc else None)
    journal.close(remove=True)
    return summary


def _run_identity(path: Path, slide_mpp: float, model: LoadedModel, config: SegmentConfig, plan: SlidePlan) -> dict:
    """What makes two runs' tiles interchangeable: tool, model, slide file, the options that
    shape the tiles' nuclei (not those of the later stages: cells, measurements, reading threads)
    and the tiles' windows."""
    stat = path.stat()
    options = {key: str(value) if isinstance(value, Path) else value for key, value in config_to_dict(config).items()
               if key not in ("cell_expansion", "cell_constrain_scale", "measure", "reader_threads")}
    return {
        "tool": __version__,
        "model": file_sha256(model.path) if model.path is not None else None,
        "thresholds": config_to_dict(model.postprocess),
        "slide": [path.name, stat.st_size, stat.st_mtime_ns],
        "microns_per_pixel": slide_mpp,
        "options": options,
        "tiles": hashlib.sha256(orjson.dumps([(tile.index, tile.read, tile.core) for tile in plan.tiles])).hexdigest(),
    }


def _observed(nuclei: Iterator[Nucleus], collector: QcCollector) -> Iterator[Nucleus]:
    for nucleus in nuclei:
        collector.add(nucleus)
        yield nucleus


def _qc_collector(plan: SlidePlan, config: SegmentConfig) -> QcCollector:
    """The QC collector, with the tissue mask's thumbnail (or a fresh one when the mask was off)."""
    if plan.thumbnail is not None:
        return QcCollector(plan, plan.thumbnail, plan.tissue, plan.thumbnail_downsample)
    thumbnail, downsample = plan.slide.thumbnail(config.thumbnail_size)
    return QcCollector(plan, thumbnail, None, downsample)


def _stem(output: Path) -> str:
    """The output's name without its GeoJSON suffix (``a.geojson.gz`` → ``a``)."""
    suffix = geojson_suffix(output)
    return output.name[: -len(suffix)] if suffix else output.stem


def run_report_path(output: Path) -> Path:
    """``nuclei.geojson`` → ``nuclei.run.json`` beside it."""
    return output.with_name(_stem(output) + ".run.json")


def qc_picture_path(output: Path) -> Path:
    """``nuclei.geojson`` → ``nuclei.qc.png`` beside it."""
    return output.with_name(_stem(output) + ".qc.png")


def _stack_padded(images: list[np.ndarray]) -> np.ndarray:
    """(h, w, 3) uint8 tiles as one (B, H, W, 3) batch, each padded white at its right and
    bottom to the largest height and width (trimmed edge tiles batched with whole ones)."""
    height, width = max(image.shape[0] for image in images), max(image.shape[1] for image in images)
    if all(image.shape[:2] == (height, width) for image in images):
        return np.stack(images)
    batch = np.full((len(images), height, width, 3), 255, np.uint8)
    for slot, image in zip(batch, images):
        slot[: image.shape[0], : image.shape[1]] = image
    return batch
