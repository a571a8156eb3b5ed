"""Accuracy of models on native 20x images, at the working resolutions they would use.

Each labelled image (0.25 µm/px) is halved (bilinear) and saved as JPEG at quality 70: the
0.5 µm/px image a 20x scanner would give. Each model segments it at its working µm/px
(``ModelCheckpoint.working_microns_per_pixel``: its own, or up to the coarsest it was trained
for) or at every ``--working-mpp`` given; outlines are brought back to the labels' 0.25 µm/px
and scored there (PQ / AJI, mean over images). Prints one line per model and resolution, with
the seconds the images took.

    python benchmarks/native20x.py DATA_DIR --names held_out.txt --model a.pt [b.pt ...] [--working-mpp 0.25 0.3]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from wsi_frgnet.engine.inference import load_model
from wsi_frgnet.eval.metrics import score_instances
from wsi_frgnet.geometry.raster import polygons_to_label_map
from wsi_frgnet.io.data_folder import list_labelled_images, load_pair, named_items
from wsi_frgnet.train.augment import jpeg_round_trip

DOWNSAMPLE = 2  # 0.25 µm/px labels → a 20x scan
SCAN_MICRONS_PER_PIXEL = 0.5


def native20x(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 at 0.25 µm/px → (H/2, W/2, 3) at 0.5 µm/px, bilinear, JPEG quality 70."""
    height, width = rgb.shape[:2]
    half = Image.fromarray(rgb).resize((round(width / DOWNSAMPLE), round(height / DOWNSAMPLE)), Image.Resampling.BILINEAR)
    return jpeg_round_trip(np.asarray(half), 70)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path, help="labelled images at 0.25 µm/px")
    parser.add_argument("--names", type=Path, help="only these image names of DATA_DIR (one a line)")
    parser.add_argument("--model", type=Path, nargs="+", required=True)
    parser.add_argument("--working-mpp", type=float, nargs="+", help="segment at these µm/px instead of the model's choice")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--tta", action="store_true", help="average over mirror images (segment --tta)")
    args = parser.parse_args()

    items = list_labelled_images(args.data_dir)
    if args.names:
        items = named_items(items, args.names)
    images = [(native20x(rgb), labels) for rgb, labels in (load_pair(item) for item in items)]
    for path in args.model:
        model = load_model(path, precision=args.precision, tta=args.tta)
        choices = args.working_mpp or [model.checkpoint.working_microns_per_pixel(SCAN_MICRONS_PER_PIXEL)]
        for working in choices:
            # A model whose range is [working, working] segments the 0.5 µm/px image at ``working``.
            pinned = replace(model, checkpoint=replace(model.checkpoint, microns_per_pixel=working, coarsest_microns_per_pixel=None))
            started = time.perf_counter()
            scores = []
            for rgb, labels in images:
                nuclei = pinned.predict(rgb, SCAN_MICRONS_PER_PIXEL).nuclei
                scores.append(score_instances(labels, polygons_to_label_map([n.polygon * DOWNSAMPLE for n in nuclei], labels.shape)))
            print(f"{path.name}: {len(images)} native 20x images at {working:.3g} µm/px: "
                  f"PQ {np.mean([s.pq for s in scores]):.3f} AJI {np.mean([s.aji for s in scores]):.3f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
