"""Training throughput: crops per second and where the time goes (prints; asserts nothing).

    python benchmarks/train_throughput.py DATA_DIR [--images 8] [--batches 8] [--precision auto]

DATA_DIR is a training-data folder (images/, labels/). Reported, per crop of --crop-size px:
- crop: cutting the random crop (and dropping annotations with --keep-fraction);
- augmentation: dihedral transform and stain jitter;
- targets: ``build_targets`` (guide, outlines, Fourier descriptors, score map);
- network: forward, losses, backward and the optimiser step, per batch and per crop;
- end to end: the training loop's own data loader (--workers processes) feeding the network,
  after one warm-up batch.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from wsi_frgnet.config import LossConfig, ModelConfig, TargetConfig
from wsi_frgnet.engine.devices import autocast_dtype, resolve_device
from wsi_frgnet.engine.inference import images_to_tensor
from wsi_frgnet.io.data_folder import list_labelled_images, load_pair
from wsi_frgnet.model import FrgNet
from wsi_frgnet.model.losses import frgnet_loss
from wsi_frgnet.train.augment import dihedral, stain_jitter
from wsi_frgnet.train.crops import LabelledArray, RandomCrops, collate
from wsi_frgnet.train.targets import build_targets


def _timed(function, repeats: int) -> float:
    """Mean seconds of ``function()`` over ``repeats`` calls."""
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--crop-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=8, help="timed batches end to end")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--keep-fraction", type=float, default=1.0)
    parser.add_argument("--architecture", choices=["default", "tiny"], default="default")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    device = resolve_device(args.device)
    config = ModelConfig() if args.architecture == "default" else ModelConfig.tiny()
    targets = TargetConfig()
    images = [LabelledArray(item.name, *load_pair(item)) for item in list_labelled_images(args.data)[: args.images]]
    dataset = RandomCrops(images, args.crop_size, config, targets, seed=0, keep_fraction=args.keep_fraction)
    count = min(len(dataset), 64)
    rng = np.random.default_rng(0)

    # Stage by stage, on the same crops the dataset draws.
    crops = [dataset._crop(images[dataset.image_of_sample[i]], np.random.default_rng([0, 0, i]))[:3] for i in range(count)]
    crop_seconds = _timed(lambda: dataset._crop(images[0], rng), count)
    augmented = []

    def augment_all() -> None:
        augmented.clear()
        for rgb, labels, unknown in crops:
            rgb, labels, unknown = dihedral(rgb, labels, rng, unknown)
            augmented.append((stain_jitter(rgb, rng), labels))

    augment_seconds = _timed(augment_all, 1) / count
    partial = args.keep_fraction < 1.0
    target_seconds = _timed(lambda: [build_targets(rgb, labels, config, targets, partial=partial) for rgb, labels in augmented], 1) / count

    torch.manual_seed(0)
    model = FrgNet(config).to(device, memory_format=torch.channels_last).train()  # as training runs
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = autocast_dtype(args.precision, device, training=True)
    generator = torch.Generator().manual_seed(0)
    loss_config = LossConfig()

    def step(images_batch: np.ndarray, batch_targets) -> None:
        inputs = images_to_tensor(images_batch, (0.7, 0.52, 0.7), (0.16, 0.2, 0.15), device)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            output = model(inputs)
        parts = frgnet_loss(model, output, batch_targets.to(device), loss_config, (args.crop_size,) * 2, generator)
        optimizer.zero_grad(set_to_none=True)
        parts["total"].backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    batch = collate([dataset[i] for i in range(args.batch_size)])
    step(*batch)  # warm-up
    network_seconds = _timed(lambda: step(*batch), 3)

    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, collate_fn=collate,
                        drop_last=True, generator=torch.Generator().manual_seed(0))
    iterator = iter(loader)
    step(*next(iterator))  # warm-up (starts the workers)
    started = time.perf_counter()
    done = 0
    for _ in range(args.batches):
        try:
            images_batch, batch_targets = next(iterator)
        except StopIteration:
            break
        step(images_batch, batch_targets)
        done += 1
    end_to_end = (time.perf_counter() - started) / max(1, done * args.batch_size)

    per_crop_network = network_seconds / args.batch_size
    print(f"{args.architecture} model, {args.crop_size}² crops, batch {args.batch_size}, precision {args.precision} "
          f"({dtype or 'fp32'}), {torch.get_num_threads()} threads, {args.workers} loader workers, {device}")
    print(f"{'stage':<28}{'ms per crop':>12}")
    for name, seconds in (("crop", crop_seconds), ("augmentation", augment_seconds), ("targets", target_seconds),
                          ("network (fwd+loss+bwd+step)", per_crop_network)):
        print(f"{name:<28}{seconds * 1e3:>12.1f}")
    print(f"{'end to end':<28}{end_to_end * 1e3:>12.1f}   = {1 / end_to_end:.2f} crops/s over {done} batches")


if __name__ == "__main__":
    main()
