"""Choose a model's score, NMS and guide-filter thresholds on validation images.

The network runs once per image; each threshold combination only re-runs post-processing.
Prints mean PQ / AJI for every combination (best first) and, with --write, saves a copy of the
model with the best thresholds stored in it. With --weights-from, the copy takes its weights
from another model instead: tune on a model trained without the validation images, then store
the thresholds in the same recipe trained on every image. With --coarsest-mpp the copy reads
coarser slides at no more than that µm/px (say a 20x slide at 0.36 although scale jitter 0.4
would allow 0.42): accuracy rather than speed.

    python benchmarks/tune_thresholds.py --model model.pt DATA_DIR [--names held_out.txt] [--write tuned.pt]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch

from wsi_frgnet.config import PostprocessConfig
from wsi_frgnet.engine.decode import decode_nuclei
from wsi_frgnet.engine.inference import images_to_tensor, load_model, pad_with_glass
from wsi_frgnet.engine.mirrors import run_network
from wsi_frgnet.eval.metrics import mean_scores, score_instances
from wsi_frgnet.geometry.raster import polygons_to_label_map
from wsi_frgnet.io.data_folder import list_labelled_images, load_pair, named_items
from wsi_frgnet.model.model_file import file_sha256, load_checkpoint, save_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--names", type=Path, help="only these image names of DATA_DIR (one a line)")
    parser.add_argument("--score", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8, 0.9])
    parser.add_argument("--nms", type=float, nargs="+", default=[0.2, 0.3, 0.4, 0.5])
    parser.add_argument("--guide", type=float, nargs="+", default=[0.0, 0.3, 0.5])
    parser.add_argument("--write", type=Path, help="save the model with the best thresholds here")
    parser.add_argument("--guide-filter", type=float, help="store this guide threshold instead of the best one")
    parser.add_argument("--half", action="store_true", help="store weights as float16 (half the file; loaded as float32)")
    parser.add_argument("--weights-from", type=Path, help="with --write: take the weights from this model (same architecture)")
    parser.add_argument("--coarsest-mpp", type=float,
                        help="with --write: read coarser slides at no more than this µm/px (between the model's µm/px "
                             "and the coarsest its training's scale jitter covers)")
    parser.add_argument("--colour-alignment", action=argparse.BooleanOptionalAction, default=True,
                        help="align each image's colours with the training data's, as segment and evaluate do by default")
    parser.add_argument("--tta", action="store_true", help="average the network over each image's mirror images (segment --tta)")
    args = parser.parse_args()

    model = load_model(args.model, colour_alignment=args.colour_alignment)
    items = list_labelled_images(args.data_dir)
    if args.names:
        items = named_items(items, args.names)
    cached = []
    for item in items:
        rgb, truth = load_pair(item)
        tensor = images_to_tensor(pad_with_glass(rgb, model.network.config.size_multiple)[None], model.normalisation_mean(rgb),
                                  model.checkpoint.std, "cpu")
        with torch.no_grad():
            cached.append((run_network(model.network, tensor, args.tta), truth))
    rows = []
    for score, nms, guide in itertools.product(args.score, args.nms, args.guide):
        config = PostprocessConfig(score_threshold=score, nms_threshold=nms, guide_threshold=guide)
        scores = []
        for output, truth in cached:
            nuclei, _ = decode_nuclei(output, 0, model.network.config, config, valid_size=truth.shape)
            scores.append(score_instances(truth, polygons_to_label_map([n.polygon for n in nuclei], truth.shape)))
        mean = mean_scores(scores)
        rows.append((mean["pq"], mean["aji"], mean["dq"], mean["sq"], config))
    rows.sort(key=lambda row: row[0], reverse=True)
    print(f"{len(items)} images; mean over images")
    print("score  nms   guide |  PQ     AJI    DQ     SQ")
    for pq, aji, dq, sq, config in rows:
        print(f"{config.score_threshold:5.2f} {config.nms_threshold:5.2f} {config.guide_threshold:5.2f} | "
              f"{pq:.4f} {aji:.4f} {dq:.4f} {sq:.4f}")
    if args.write:
        best = rows[0][4]
        if args.guide_filter is not None:
            best = PostprocessConfig(best.score_threshold, best.nms_threshold, args.guide_filter, best.min_area)
        checkpoint = load_checkpoint(args.weights_from or args.model)
        if checkpoint.model_config != model.network.config:
            parser.error(f"{args.weights_from}: another architecture than {args.model}")
        if args.half:
            checkpoint.state_dict = {k: v.half() if v.is_floating_point() else v for k, v in checkpoint.state_dict.items()}
        checkpoint.postprocess = best
        if args.coarsest_mpp is not None:
            finest = checkpoint.microns_per_pixel
            coarsest = checkpoint.coarsest_microns_per_pixel or finest
            if finest is None or not finest <= args.coarsest_mpp <= coarsest:
                parser.error(f"--coarsest-mpp {args.coarsest_mpp}: the model covers {finest}-{coarsest} µm/px")
            checkpoint.coarsest_microns_per_pixel = args.coarsest_mpp
        checkpoint.provenance = {**checkpoint.provenance, "thresholds_tuned_on": [item.name for item in items]}
        if args.weights_from:
            checkpoint.provenance["thresholds_tuned_with"] = file_sha256(args.model)
        save_checkpoint(args.write, checkpoint)
        print(f"wrote {args.write} with {best}")


if __name__ == "__main__":
    main()
