"""``frgnet-wsi segment slide.svs -o nuclei.geojson`` (or several slides into a folder)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

logger = logging.getLogger(__name__)

from wsi_frgnet.cli.common import (
    colour_alignment_option,
    configure_logging,
    device_option,
    handles_user_errors,
    model_option,
    mpp_option,
    precision_option,
    quiet_option,
    threshold_options,
    tta_option,
)

from wsi_frgnet.config import TILE_LAYOUTS, SegmentConfig
from wsi_frgnet.io.geojson import is_geojson


def _output_paths(slides: tuple[Path, ...], output: Path, gzip: bool) -> tuple[list[Path], bool]:
    """(one output per slide, whether OUTPUT is a folder). OUTPUT itself for a single slide
    when it is named like a GeoJSON file; else OUTPUT/<slide stem>.geojson[.gz]."""
    named_as_file = is_geojson(output) and not output.is_dir()
    if not named_as_file and output.suffix and not output.is_dir():
        raise click.BadParameter(f"{output}: neither a GeoJSON file name (.geojson, .json, or .gz of either) nor a folder",
                                 param_hint="--output")
    if named_as_file:
        if len(slides) > 1:
            raise click.BadParameter(f"{output} names one file, but {len(slides)} slides were given: give a folder", param_hint="--output")
        if gzip:
            raise click.BadParameter("--gzip applies to folder outputs; name the file .geojson.gz instead", param_hint="--gzip")
        return [output], False
    suffix = ".geojson.gz" if gzip else ".geojson"
    outputs = [output / f"{slide.stem}{suffix}" for slide in slides]
    if len(set(outputs)) < len(outputs):
        raise click.BadParameter("several slides share a file name; segment them into different folders", param_hint="SLIDES")
    return outputs, True


def _table_paths(slides: tuple[Path, ...], table: Path | None, into_folder: bool) -> list[Path | None]:
    """Where each slide's table goes: TABLE itself (a .csv) for one slide written to a file,
    TABLE/<slide stem>.csv (folder created) for a folder output."""
    if table is None:
        return [None] * len(slides)
    if not into_folder:
        if table.suffix.lower() != ".csv":
            raise click.BadParameter(f"{table}: the table of one slide is a .csv file", param_hint="--table")
        return [table]
    if table.suffix:
        raise click.BadParameter(f"{table}: with a folder output, give a folder for the tables (one .csv per slide)", param_hint="--table")
    table.mkdir(parents=True, exist_ok=True)
    return [table / f"{slide.stem}.csv" for slide in slides]


def _layouts(field: int) -> str:
    """One field of the per-device tile layouts, for --help: "1536 on CUDA, 1024 on CPU"."""
    return ", ".join(f"{layout[field]} on {device.upper()}" for device, layout in TILE_LAYOUTS.items())


@click.command()
@click.argument("slides", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="SLIDES...")
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True,
              help="GeoJSON file (.geojson, .json, or .gz of either) for one slide, or a folder for several.")
@model_option
@mpp_option("µm/px of the slides, overriding (or replacing missing) metadata.")
@click.option("--roi", nargs=4, type=int, metavar="X Y W H", default=SegmentConfig.roi,
              help="Only this rectangle: level-0 px in the output's frame (QuPath's: relative to the slide bounds unless --no-bounds-offset).")
@click.option("--roi-geojson", type=click.Path(path_type=Path), default=SegmentConfig.roi_geojson, help="Only inside these QuPath annotations (exported GeoJSON).")
@click.option("--tissue-mask/--no-tissue-mask", default=SegmentConfig.tissue_mask, show_default=True, help="Skip glass, found on a low-resolution thumbnail.")
@colour_alignment_option
@tta_option
@click.option("--tile-size", type=int, default=None,
              help=f"Network tile side, px at the model's resolution [default: {_layouts(0)}].")
@click.option("--context", "--overlap", "context", type=int, default=None,
              help=f"Overlap on each tile side, px at the model's resolution; must exceed the largest nucleus. The larger, the closer "
                   f"tiled outlines are to one pass over the whole slide [default: {_layouts(1)}; with --tile-size: up to an eighth of it].")
@click.option("--batch-size", type=int, default=None, help=f"Tiles per network pass [default: {_layouts(2)}].")
@precision_option(SegmentConfig.precision, "auto: bf16 on CUDA (fp16 where bf16 is missing) and on CPUs with native bf16, else fp32.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Slide-reading threads [default: one per core].")
@click.option("--bounds-offset/--no-bounds-offset", default=SegmentConfig.subtract_bounds, show_default=True,
              help="Subtract the slide's OpenSlide bounds from coordinates, as QuPath does.")
@click.option("--cell-expansion", type=float, default=SegmentConfig.cell_expansion, show_default=True, metavar="MICRONS",
              help="Write QuPath cells: each nucleus grown by up to this many µm, stopping where neighbouring cells meet; 0: nuclei only.")
@click.option("--cell-constrain-scale", type=float, default=SegmentConfig.cell_constrain_scale, show_default=True,
              help="A cell stays inside its nucleus' convex hull scaled by this factor (as QuPath's constrain scale); 1 or less: no limit.")
@click.option("--measurements/--no-measurements", "measure", default=SegmentConfig.measure, show_default=True,
              help="Shape and haematoxylin/eosin optical-density measurements of every object, named as QuPath names them.")
@click.option("--table", type=click.Path(path_type=Path),
              help="Also write one CSV row per object (id, centroid in px and µm, every measurement): a .csv file for one slide, a folder for several.")
@click.option("--qc", is_flag=True, help="Also write OUTPUT.qc.png beside each output: thumbnail, tissue outline, nucleus density and three crops with outlines.")
@click.option("--gzip", is_flag=True, help="With a folder output: write .geojson.gz files.")
@click.option("--ray", metavar="local|auto|ray://HOST:PORT",
              help="Segment the slides as Ray tasks: local starts Ray on this machine, auto joins this machine's cluster, "
                   "ray://HOST:PORT a cluster's head (outputs must then be on a filesystem every node shares). Needs the ray extra.")
@click.option("--ray-cpus", type=click.IntRange(min=1), default=2, show_default=True,
              help="CPUs of each Ray task where the cluster has no GPU (each task with a GPU takes one).")
@click.option("--overwrite", is_flag=True,
              help="Replace outputs that exist (otherwise those slides are skipped) and start slides over instead of resuming them.")
@threshold_options
@device_option
@quiet_option
@handles_user_errors
def segment(slides: tuple[Path, ...], output: Path, model_path: Path | None, mpp: float | None, roi: tuple[int, int, int, int] | None,
            roi_geojson: Path | None, tissue_mask: bool, colour_alignment: bool, tta: bool, tile_size: int, context: int, batch_size: int, precision: str, threads: int,
            bounds_offset: bool, cell_expansion: float, cell_constrain_scale: float, measure: bool, table: Path | None, qc: bool, gzip: bool,
            ray: str | None, ray_cpus: int, overwrite: bool, score_threshold: float | None, nms_threshold: float | None, guide_threshold: float | None, device: str,
            quiet: bool) -> None:
    """Find every nucleus in whole-slide images (any format OpenSlide reads, or plain images)
    and write them as QuPath detections, or cells with --cell-expansion (GeoJSON, level-0 px),
    with QuPath-named measurements, and a run report (OUTPUT.run.json) beside each output.

    SLIDES are slide or image files, folders of them, or .txt files listing them (one path a
    line). Several slides go into the folder OUTPUT, one file each, with a progress bar over
    slides; a slide that fails is reported at the end and the exit status is non-zero. A run cut short (a crash, Ctrl-C, SIGTERM, SIGKILL)
    keeps a journal of its finished tiles beside the output: the same command continues from
    it and writes the same file.
    """
    configure_logging(quiet)
    from tqdm.auto import tqdm

    from wsi_frgnet.engine.batch import JobOutcome, JobSettings, SlideJob, run_job
    from wsi_frgnet.engine.cluster import run_on_ray
    from wsi_frgnet.engine.devices import resolve_device
    from wsi_frgnet.engine.inference import default_model_path, load_model
    from wsi_frgnet.errors import InputError
    from wsi_frgnet.io.slide import list_slides


    try:
        config = SegmentConfig(tile_size=tile_size, context=context, batch_size=batch_size, tissue_mask=tissue_mask, roi=roi,
                               colour_alignment=colour_alignment, tta=tta,
                               roi_geojson=roi_geojson, subtract_bounds=bounds_offset, reader_threads=threads, precision=precision,
                               cell_expansion=cell_expansion, cell_constrain_scale=cell_constrain_scale, measure=measure)
        for device_type in TILE_LAYOUTS:  # a layout left open is completed on the device that runs it
            config.for_device(device_type)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    slides = tuple(list_slides(slides))
    outputs, into_folder = _output_paths(slides, output, gzip)
    tables = _table_paths(slides, table, into_folder)
    if into_folder:
        if output.exists() and not output.is_dir():
            raise InputError(f"{output}: exists and is not a folder; name the output .geojson or give a folder")
        output.mkdir(parents=True, exist_ok=True)
    jobs = [SlideJob(slide, target, table_path) for slide, target, table_path in zip(slides, outputs, tables)]
    several = len(jobs) > 1
    settings = JobSettings(config, mpp, qc, overwrite, quiet=quiet or several or ray is not None)
    noun = "cells" if config.cell_expansion > 0 else "nuclei"
    outcomes = []
    with tqdm(total=len(jobs), desc="slides", unit="slide", disable=quiet or not several) as bar:

        def report(outcome: JobOutcome) -> None:
            outcomes.append(outcome)
            bar.update(1)
            if outcome.status == "done":
                tqdm.write(f"{outcome.job.slide}: {outcome.objects} {noun}, {outcome.tissue_area_mm2:.2f} mm² of tissue, "
                           f"{outcome.seconds:.1f} s -> {outcome.job.output}")
            elif outcome.status == "skipped":
                tqdm.write(f"{outcome.job.slide}: skipped, {outcome.message}", file=sys.stderr)
            elif several or ray is not None:
                tqdm.write(f"Error: {outcome.message}", file=sys.stderr)

        if ray is not None:
            run_on_ray(jobs, model_path or default_model_path(), settings, ray, (score_threshold, nms_threshold, guide_threshold),
                       ray_cpus, on_outcome=report)
        else:
            model = load_model(model_path, resolve_device(device), score_threshold, nms_threshold, guide_threshold)
            for job in jobs:
                try:
                    outcome = run_job(job, model, settings)
                except Exception as exc:  # one slide's unexpected failure must not stop the others
                    if not several:
                        raise
                    logger.debug("segmenting %s failed", job.slide, exc_info=True)
                    outcome = JobOutcome(job, "failed", message=f"{job.slide}: unexpected {type(exc).__name__}: {exc}")
                if outcome.status == "failed" and not several:
                    raise InputError(outcome.message)
                report(outcome)
    failures = [outcome for outcome in outcomes if outcome.status == "failed"]
    if several or ray is not None:
        done = sum(outcome.status == "done" for outcome in outcomes)
        skipped = sum(outcome.status == "skipped" for outcome in outcomes)
        total = sum(outcome.objects for outcome in outcomes)
        click.echo(f"{done} segmented, {skipped} skipped, {len(failures)} failed; {total} {noun} in all")
    if failures:
        click.echo(f"Error: {len(failures)} of {len(jobs)} slides failed: {', '.join(str(o.job.slide) for o in failures)}", err=True)
        sys.exit(1)
