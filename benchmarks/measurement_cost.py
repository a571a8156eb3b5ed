"""What measurements and cells add to ``segment``'s time (prints; asserts nothing).

    python benchmarks/measurement_cost.py SLIDE [--model model.pt] [--repeats 3] [--cell-expansion 5]

Segments SLIDE three ways in this process, alternating, and reports the fastest of
``--repeats`` runs of each: without measurements, with them (the default), and with cells of
``--cell-expansion`` µm (measured). The added share is relative to the run without
measurements.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from wsi_frgnet.config import SegmentConfig
from wsi_frgnet.engine.devices import resolve_device
from wsi_frgnet.engine.inference import load_model
from wsi_frgnet.engine.pipeline import segment_slide


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("slide", type=Path)
    parser.add_argument("--model", type=Path, default=None, help="default: the shipped model")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cell-expansion", type=float, default=5.0, help="µm")
    args = parser.parse_args()
    model = load_model(args.model, resolve_device(args.device))
    settings = {
        "no measurements": SegmentConfig(measure=False),
        "measurements (default)": SegmentConfig(),
        f"cells of {args.cell_expansion:g} µm, measured": SegmentConfig(cell_expansion=args.cell_expansion),
    }
    best = {name: float("inf") for name in settings}
    counts = {}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            for name, config in settings.items():
                started = time.perf_counter()
                summary = segment_slide(args.slide, model, config, Path(folder) / "out.geojson", quiet=True)
                best[name] = min(best[name], time.perf_counter() - started)
                counts[name] = summary.nuclei
    base = best["no measurements"]
    print(f"{args.slide.name}: fastest of {args.repeats} runs each")
    for name, seconds in best.items():
        print(f"{name:<34} {seconds:7.2f} s  {counts[name]:>7} objects  {100 * (seconds / base - 1):+6.1f} %")


if __name__ == "__main__":
    main()
