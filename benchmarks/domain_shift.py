"""Domain-shift experiment: does unlabelled fine-tuning recover accuracy after a shift?

1. Move labelled validation images to another domain with a fixed transform (``--shift``):
   ``lab``: weaker haematoxylin, stronger eosin, a colour cast and a slight blur;
   ``scanner20x``: downsampled 2x and upsampled again, then JPEG at quality 70 (a 20x scanner);
   ``stain-pale``: faded stains (haematoxylin x0.6, eosin x0.7);
   ``stain-dark``: heavy haematoxylin (x1.5), eosin x1.2 and a blue cast.
2. Score the base model there (PQ / AJI, mean over images).
3. Fine-tune it on the shifted images *without their labels*, as ``finetune`` does by default:
   the input normalisation aligned with their colours (``--no-input-statistics``: not), then the
   guide head trained on their own Fourier guide.
4. Score the adapted model on the shifted images, and on the original ones (no regression).

    python benchmarks/domain_shift.py --model model.pt DATA_DIR --names held_out.txt [--shift scanner20x] [--epochs 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from wsi_frgnet.config import TrainingConfig
from wsi_frgnet.engine.inference import load_model
from wsi_frgnet.eval.evaluation import evaluate_folder
from wsi_frgnet.io.data_folder import list_labelled_images, load_pair, named_items
from wsi_frgnet.io.images import write_label_map, write_png
from wsi_frgnet.train.augment import (
    adjust_stains,
    jpeg_round_trip,
    resolution_round_trip,
)
from wsi_frgnet.train.finetune import finetune, sample_tiles
from wsi_frgnet.train.loop import TrainingRun


def other_lab(rgb: np.ndarray) -> np.ndarray:
    """The fixed "other lab" transform: H x0.65, E x1.4, a warm cast, Gaussian blur σ = 1 px."""
    out = adjust_stains(rgb, np.array([0.65, 1.4, 1.0]), np.zeros(3))
    out = out * np.array([1.04, 0.97, 0.92]) + np.array([6.0, 0.0, -4.0])
    out = ndimage.gaussian_filter(out, sigma=(1.0, 1.0, 0.0))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _stains(rgb: np.ndarray, haematoxylin: float, eosin: float, cast: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    out = adjust_stains(rgb, np.array([haematoxylin, eosin, 1.0]), np.zeros(3)) + np.array(cast)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


SHIFTS = {
    "lab": other_lab,
    "scanner20x": lambda rgb: jpeg_round_trip(resolution_round_trip(rgb, 0.5), 70),
    "stain-pale": lambda rgb: _stains(rgb, 0.6, 0.7),
    "stain-dark": lambda rgb: _stains(rgb, 1.5, 1.2, (-6.0, 0.0, 8.0)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--names", type=Path, help="only these image names of DATA_DIR (one a line)")
    parser.add_argument("--shift", choices=sorted(SHIFTS), default="lab")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--tiles-per-image", type=int, default=16)
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--input-statistics", action=argparse.BooleanOptionalAction, default=True,
                        help="align the input normalisation with the shifted images' colours first (finetune's default)")
    parser.add_argument("--guide-target", choices=["soft", "hard"],
                        help="unlabelled guide target: the normalised guide g, or g binarised at 0.5 (METHOD_NOTES.md §2); "
                             "default: the model's own guide mode")
    parser.add_argument("--colour-alignment", action=argparse.BooleanOptionalAction, default=True,
                        help="score every model with each image's colours aligned with its training data's (the default of "
                             "segment, predict and evaluate)")
    parser.add_argument("--keep", type=Path, help="also save the adapted model here")
    args = parser.parse_args()

    items = list_labelled_images(args.data_dir)
    if args.names:
        items = named_items(items, args.names)
    base = load_model(args.model, colour_alignment=args.colour_alignment)
    mpp = base.checkpoint.microns_per_pixel
    with tempfile.TemporaryDirectory() as folder:
        shifted = Path(folder) / "shifted"
        (shifted / "images").mkdir(parents=True)
        (shifted / "labels").mkdir()
        original = Path(folder) / "original"
        (original / "images").mkdir(parents=True)
        (original / "labels").mkdir()
        for item in items:
            rgb, labels = load_pair(item)
            write_png(shifted / "images" / f"{item.name}.png", SHIFTS[args.shift](rgb))
            write_label_map(shifted / "labels" / f"{item.name}.png", labels)
            write_png(original / "images" / f"{item.name}.png", rgb)
            write_label_map(original / "labels" / f"{item.name}.png", labels)

        rows = [("base", "original", evaluate_folder(base.segment, original, quiet=True).mean),
                ("base", args.shift, evaluate_folder(base.segment, shifted, quiet=True).mean)]
        started = time.monotonic()
        sample = sample_tiles([shifted / "images"], base, args.tiles_per_image, args.tile_size, seed=0, microns_per_pixel=mpp)
        output = args.keep or Path(folder) / "adapted.pt"
        run = TrainingRun(
            output=output, model_config=replace(base.checkpoint.model_config, guide=args.guide_target or base.checkpoint.model_config.guide),
            postprocess=base.checkpoint.postprocess,
            training=TrainingConfig(epochs=args.epochs, batch_size=8, learning_rate=args.learning_rate, warmup_epochs=0.5,
                                    crop_size=args.tile_size, workers=0, validate_every=args.epochs),
            microns_per_pixel=mpp, mean=base.checkpoint.mean, std=base.checkpoint.std, quiet=True,
        )
        finetune(run, base, args.model, sample, "guide", input_statistics=args.input_statistics)
        minutes = (time.monotonic() - started) / 60
        adapted = load_model(output, colour_alignment=args.colour_alignment)
        rows += [("adapted", "original", evaluate_folder(adapted.segment, original, quiet=True).mean),
                 ("adapted", args.shift, evaluate_folder(adapted.segment, shifted, quiet=True).mean)]
    print(f"{len(items)} images, shift {args.shift}, colour alignment {'on' if args.colour_alignment else 'off'}; fine-tuning (input statistics {'on' if args.input_statistics else 'off'}, guide head, {len(sample.tiles)} unlabelled tiles, "
          f"{args.epochs} epochs): "
          f"{minutes:.1f} min")
    print("| model | images | PQ | AJI | DQ | SQ |")
    print("|---|---|---|---|---|---|")
    for model_name, images, mean in rows:
        print(f"| {model_name} | {images} | {mean['pq']:.3f} | {mean['aji']:.3f} | {mean['dq']:.3f} | {mean['sq']:.3f} |")


if __name__ == "__main__":
    main()
