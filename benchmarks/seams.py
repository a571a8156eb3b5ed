"""Do tiles change the answer? ``segment`` with several tile sizes and contexts against one
network pass over the whole region, on a real slide.

The reference is a single tile covering the region plus ``--margin`` working px of the slide's
own tissue on every side, so that near the region's edges both runs see the same pixels and
only the seams differ; its read window sits on the same 32 px grid as the tiles' (a shift by
less than the network's deepest stride changes its output on its own). Both runs go through ``segment_slide`` (same reader, same resampling,
no tissue mask) and keep the nuclei whose centroid lies in the region. Prints, per layout:
PQ against the single pass (1 = identical outlines), the unmatched nuclei on either side,
duplicates (pairs of nuclei of one run overlapping by more than half of the smaller one,
beyond those the single pass itself has), the relative network cost (read px per owned px)
and the wall time.

    python benchmarks/seams.py SLIDE --region X Y W H [--model model.pt] [--layout 512/64 ...]

Region in level-0 px. Defaults: the 20x slide ``CMU-1-Small-Region.svs`` where present and a
tissue-rich 1024 x 1024 region of it.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import shapely

from wsi_frgnet.config import SegmentConfig
from wsi_frgnet.engine.inference import load_model
from wsi_frgnet.engine.pipeline import iterate_nuclei, segment_slide
from wsi_frgnet.engine.planning import plan_slide
from wsi_frgnet.engine.tiling import Tile
from wsi_frgnet.eval.metrics import score_instances
from wsi_frgnet.geometry.raster import polygons_to_label_map
from wsi_frgnet.io.geojson import read_features
from wsi_frgnet.io.slide import open_slide

DEFAULT_SLIDE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"
DEFAULT_LAYOUTS = ("512/64", "512/128", "1024/128", "1024/192", "1536/192")


def outlines(path: Path) -> list[np.ndarray]:
    return [np.asarray(f["geometry"]["coordinates"][0], dtype=np.float64) for f in read_features(path)]


def duplicates(rings: list[np.ndarray]) -> int:
    """Pairs of outlines whose overlap exceeds half of the smaller one."""
    shapes = np.array([shapely.Polygon(ring) for ring in rings], dtype=object)
    tree = shapely.STRtree(shapes)
    first, second = tree.query(shapes, predicate="intersects")
    pairs = first < second
    first, second = first[pairs], second[pairs]
    overlap = shapely.area(shapely.intersection(shapes[first], shapes[second]))
    smaller = np.minimum(shapely.area(shapes[first]), shapely.area(shapes[second]))
    return int(np.sum(overlap > 0.5 * smaller))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("slide", type=Path, nargs="?", default=DEFAULT_SLIDE)
    parser.add_argument("--region", type=int, nargs=4, default=(1000, 1200, 1024, 1024), metavar=("X", "Y", "W", "H"))
    parser.add_argument("--model", type=Path, default=None, help="model file (default: the shipped one)")
    parser.add_argument("--margin", type=int, default=256, help="working px of slide around the region in the single pass (multiple of 32)")
    parser.add_argument("--layout", nargs="+", default=DEFAULT_LAYOUTS, help="TILE/CONTEXT in working px")
    parser.add_argument("--mpp", type=float, default=None, help="µm/px of the slide when its file does not say")
    parser.add_argument("--tta", action="store_true", help="both runs average over mirror images (segment --tta)")
    args = parser.parse_args()

    model = load_model(args.model, precision="fp32")
    x, y, width, height = args.region
    base = SegmentConfig(roi=tuple(args.region), tissue_mask=False, measure=False, precision="fp32", tta=args.tta)
    with tempfile.TemporaryDirectory() as folder:

        def tiled(tile: int, context: int) -> tuple[list[np.ndarray], float]:
            output = Path(folder) / f"{tile}_{context}.geojson"
            started = time.perf_counter()
            segment_slide(args.slide, model, replace(base, tile_size=tile, context=context), output, microns_per_pixel=args.mpp, quiet=True)
            return outlines(output), time.perf_counter() - started

        # The single pass: the planned region as the core of one tile grown by the margin, its read
        # window on the 32 px grid the tiles' windows sit on. Same reading, network and merging.
        started = time.perf_counter()
        with open_slide(args.slide, args.mpp) as slide:
            plan = plan_slide(slide, model, replace(base, tile_size=512, context=64))
            left = min(t.core[0] for t in plan.tiles)
            top = min(t.core[1] for t in plan.tiles)
            right = max(t.core[0] + t.core[2] for t in plan.tiles)
            bottom = max(t.core[1] + t.core[3] for t in plan.tiles)
            side = math.ceil((max(right - left, bottom - top) + 32) / 32) * 32 + 2 * args.margin
            read = (left // 32 * 32 - args.margin, top // 32 * 32 - args.margin, side, side)
            plan.tiles = [Tile(0, read, (left, top, right - left, bottom - top), args.margin)]
            single = replace(base, tile_size=side, context=args.margin, batch_size=1)
            reference = [n.polygon for n in iterate_nuclei(plan, model, single) if n.polygon is not None]
        seconds = time.perf_counter() - started
        # Label maps in level-0 px of the region, shifted to its corner.
        shape = (height, width)
        origin = np.array([x, y], dtype=np.float64)
        reference_map = polygons_to_label_map([ring - origin for ring in reference], shape)
        print(f"{args.slide.name}: region {tuple(args.region)} level-0 px, {len(reference)} nuclei in one pass "
              f"of {side} px ({seconds:.1f} s); duplicates there: {duplicates(reference)}")
        print(f"{'layout':>10} {'PQ':>7} {'unmatched':>10} {'duplicates':>11} {'cost':>6} {'seconds':>8}")
        for layout in args.layout:
            tile, context = (int(v) for v in layout.split("/"))
            rings, seconds = tiled(tile, context)
            scores = score_instances(reference_map, polygons_to_label_map([ring - origin for ring in rings], shape))
            cost = (tile / (tile - 2 * context)) ** 2
            extra = duplicates(rings) - duplicates(reference)
            unmatched = scores.false_positives + scores.false_negatives
            print(f"{layout:>10} {scores.pq:7.4f} {unmatched:10d} {extra:11d} {cost:6.2f} {seconds:8.1f}")


if __name__ == "__main__":
    main()
