"""The run report: a small JSON file beside each output that says what produced it.

Written after the GeoJSON (atomically, like every output): tool version, when, the slide
(name, size, µm/px used and where it came from), the model (file name, SHA-256, its µm/px, the
thresholds used), every option of the run, the tiles, timings, counts and the tissue area. It
is not put inside the GeoJSON: QuPath's reader takes the objects of a FeatureCollection, and
nothing shows that it would carry extra top-level keys anywhere a user could see them.
"""

from __future__ import annotations

import datetime
import platform
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from wsi_frgnet import __version__
from wsi_frgnet.config import SegmentConfig, config_to_dict
from wsi_frgnet.io.atomic import atomic_write
from wsi_frgnet.model.model_file import file_sha256

if TYPE_CHECKING:  # the pipeline imports this module
    from wsi_frgnet.engine.inference import LoadedModel
    from wsi_frgnet.engine.pipeline import SegmentSummary
    from wsi_frgnet.engine.planning import SlidePlan


def write_run_report(
    path: Path, summary: SegmentSummary, plan: SlidePlan, model: LoadedModel, config: SegmentConfig,
    slide_mpp: float, table: Path | None, qc: Path | None,
) -> None:
    """Write the report of one slide's run to ``path``."""
    slide = plan.slide
    report: dict[str, Any] = {
        "tool": f"frgnet-wsi {__version__}",
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "slide": {
            "file": slide.path.name,
            "dimensions_px": list(slide.dimensions),
            "bounds_px": list(slide.bounds),
            "microns_per_pixel": slide_mpp,
            "pyramid_level_read": plan.level,
        },
        "model": {
            "file": None if model.path is None else model.path.name,
            "sha256": None if model.path is None else file_sha256(model.path),
            "microns_per_pixel": model.checkpoint.microns_per_pixel,
            "coarsest_microns_per_pixel": model.checkpoint.coarsest_microns_per_pixel,
            "thresholds": asdict(model.postprocess),
            "device": str(next(model.network.parameters()).device),
        },
        "colour_alignment": None if plan.colour is None else plan.colour.as_dict(),
        "working_px_per_level0_px": 1.0 / plan.factor,
        "working_microns_per_pixel": plan.factor * slide_mpp if slide_mpp else None,
        "options": {key: str(value) if isinstance(value, Path) else value for key, value in config_to_dict(config).items()},
        "tiles": summary.tiles,
        "tissue_area_mm2": round(summary.tissue_area_mm2, 4),
        "objects": summary.nuclei,
        "object_type": "cell" if config.cell_expansion > 0 else "detection",
        "nuclei_larger_than_context": summary.oversized,
        "seconds": {"segmentation": round(summary.geojson_seconds, 2), "total": round(summary.seconds, 2)},
        "outputs": {
            "geojson": summary.output.name if summary.output is not None else None,
            "table": None if table is None else Path(table).name,
            "qc_picture": None if qc is None else qc.name,
        },
    }
    data = orjson.dumps(report, option=orjson.OPT_INDENT_2)
    atomic_write(path, lambda handle: handle.write(data))
