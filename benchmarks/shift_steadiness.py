"""How much does a model's answer move when the image shifts by a few pixels?

For each labelled image (its top-left 960² px), one pass over it and one over the same image
shifted by S px; prints the mean PQ of one output against the other, scored 64 px away from
the edges (1 = the same outlines). Thresholds: score 0.95, NMS 0.2, guide filter 0.5.

    python benchmarks/shift_steadiness.py DATA_DIR --model model.pt [--names held_out.txt] [--shift 1 2 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from wsi_frgnet.engine.inference import load_model
from wsi_frgnet.eval.metrics import score_instances
from wsi_frgnet.io.data_folder import list_labelled_images, load_pair, named_items

SIDE, MARGIN = 960, 64  # px of each image used; px left out at every edge when scoring


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--model", type=Path, nargs="+", required=True)
    parser.add_argument("--names", type=Path, help="only these image names of DATA_DIR (one a line)")
    parser.add_argument("--shift", type=int, nargs="+", default=[1, 2, 4], help="shifts in px (along x and y)")
    args = parser.parse_args()

    items = list_labelled_images(args.data_dir)
    if args.names:
        items = named_items(items, args.names)
    images = [load_pair(item)[0] for item in items]
    for path in args.model:
        model = load_model(path, score_threshold=0.95, nms_threshold=0.2, guide_threshold=0.5)
        for shift in args.shift:
            agreement = []
            for rgb in images:
                plain = model.segment(rgb[:SIDE, :SIDE])
                moved = model.segment(rgb[shift : SIDE + shift, shift : SIDE + shift])
                # Pixel (y, x) of the plain pass is pixel (y - shift, x - shift) of the moved one.
                inner = slice(MARGIN + shift, SIDE - MARGIN)
                inner_moved = slice(MARGIN, SIDE - MARGIN - shift)
                agreement.append(score_instances(plain[inner, inner], moved[inner_moved, inner_moved]).pq)
            print(f"{path.name}: shift {shift} px, {len(images)} images: PQ between the two passes {np.mean(agreement):.3f}", flush=True)


if __name__ == "__main__":
    main()
