"""Many slides, one job each: the unit both the sequential loop and the Ray runner execute.

A job segments one slide into its output (and table), with the same call as a single-slide
run, so a slide's file is the same whichever way it was made. Outcomes are plain values, so
that they travel back from cluster workers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from wsi_frgnet.config import SegmentConfig
from wsi_frgnet.engine.inference import LoadedModel
from wsi_frgnet.engine.pipeline import segment_slide
from wsi_frgnet.errors import InputError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlideJob:
    """One slide and where its results go."""

    slide: Path
    output: Path
    table: Path | None = None


@dataclass(frozen=True)
class JobOutcome:
    """What became of a job: ``done``, ``skipped`` (its output existed) or ``failed``."""

    job: SlideJob
    status: str
    objects: int = 0
    tissue_area_mm2: float = 0.0
    seconds: float = 0.0
    message: str = ""


@dataclass(frozen=True)
class JobSettings:
    """What every job of a run shares."""

    config: SegmentConfig
    microns_per_pixel: float | None = None  # overrides the slides' own
    qc: bool = False
    overwrite: bool = False  # replace existing outputs and start slides over
    quiet: bool = True


def run_job(job: SlideJob, model: LoadedModel, settings: JobSettings) -> JobOutcome:
    """Segment one slide; bad input (an unreadable slide...) becomes a ``failed`` outcome with
    its one-line message, anything unexpected is raised (a cluster may retry it)."""
    if job.output.exists() and not settings.overwrite:
        return JobOutcome(job, "skipped", message=f"{job.output} exists (--overwrite to replace)")
    try:
        summary = segment_slide(job.slide, model, settings.config, job.output, settings.microns_per_pixel, settings.quiet,
                                job.table, settings.qc, restart=settings.overwrite)
    except InputError as exc:
        return JobOutcome(job, "failed", message=str(exc))
    return JobOutcome(job, "done", summary.nuclei, summary.tissue_area_mm2, summary.seconds)
