"""Throughput and memory of ``segment`` on large synthetic pyramidal slides.

Writes two Aperio-style pyramidal TIFFs holding the same synthetic tissue (a square of
``--tissue`` px at the model's µm/px): one just around the tissue, one ``--glass-factor``
times larger per side (mostly empty glass). Then prints, for each:
  - model-only throughput: the network alone on the slide's tissue tiles already in memory,
    run on the same streams as ``segment`` (on CPU: one per share of the cores);
  - end-to-end throughput: ``segment_slide`` from file to GeoJSON (reading, tissue
    detection, network, post-processing, merging, export), with its peak RSS.
Each measurement runs in a fresh process (peak RSS is that of the process) and is repeated
``--repeats`` times; the fastest run is reported, which steadies figures on a busy machine.

    python benchmarks/segment_throughput.py --model model.pt [--device cpu] [--tissue 4096]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from wsi_frgnet.config import SegmentConfig

TILE = 256


def write_slide(path: Path, tissue: np.ndarray, side: int, mpp: float) -> None:
    """Pyramidal TIFF (JPEG tiles) of ``side`` x ``side`` px: ``tissue`` at the top-left corner
    (after a 512 px margin), glass elsewhere; reduced levels by 2x down to <= 1024 px."""
    side = math.ceil(side / TILE) * TILE
    glass = np.full((TILE, TILE, 3), 245, dtype=np.uint8)
    levels = [tissue]
    while max(side >> (len(levels) - 1), 1) > 1024:
        previous = levels[-1]
        even = previous[: previous.shape[0] // 2 * 2, : previous.shape[1] // 2 * 2].astype(np.uint16)
        levels.append(((even[0::2, 0::2] + even[1::2, 0::2] + even[0::2, 1::2] + even[1::2, 1::2]) // 4).astype(np.uint8))

    def tiles(level: int):
        scale = 2**level
        margin = 512 // scale
        content = levels[level]
        size = math.ceil(side / scale)  # exact level size: edge tiles are partly outside
        for y in range(0, size, TILE):
            for x in range(0, size, TILE):
                if x + TILE <= margin or y + TILE <= margin or x >= margin + content.shape[1] or y >= margin + content.shape[0]:
                    yield glass
                    continue
                tile = glass.copy()
                ys, xs = max(y, margin), max(x, margin)
                ye, xe = min(y + TILE, margin + content.shape[0]), min(x + TILE, margin + content.shape[1])
                tile[ys - y : ye - y, xs - x : xe - x] = content[ys - margin : ye - margin, xs - margin : xe - margin]
                yield tile

    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for level in range(len(levels)):
            size = math.ceil(side / 2**level)
            tif.write(
                tiles(level), shape=(size, size, 3), dtype=np.uint8, tile=(TILE, TILE), photometric="rgb",
                compression="jpeg", compressionargs={"level": 90}, resolutionunit="CENTIMETER",
                resolution=(1e4 / mpp / 2**level, 1e4 / mpp / 2**level), subfiletype=1 if level else 0, metadata=None,
            )


def synthetic_tissue(side: int) -> np.ndarray:
    from wsi_frgnet.synthetic import synthetic_nuclei

    tissue = np.empty((side, side, 3), dtype=np.uint8)
    block = 512
    for y in range(0, side, block):
        for x in range(0, side, block):
            rgb, _ = synthetic_nuclei(block, block, seed=y * 7919 + x)
            tissue[y : y + block, x : x + block] = rgb[: side - y, : side - x]
    return tissue


def _model_only(args: argparse.Namespace, slide: Path, queue) -> None:
    import torch

    from wsi_frgnet.engine.devices import (
        autocast_dtype,
        network_executor,
        network_thread_shares,
        resolve_device,
    )
    from wsi_frgnet.engine.inference import images_to_tensor, load_model
    from wsi_frgnet.engine.mirrors import run_network
    from wsi_frgnet.engine.planning import plan_slide, read_tile
    from wsi_frgnet.io.slide import open_slide

    device = resolve_device(args.device)
    model = load_model(args.model, device)
    config = SegmentConfig(tile_size=args.tile_size, context=args.context, batch_size=args.batch_size, precision=args.precision, tta=args.tta)
    with open_slide(slide) as opened:
        plan = plan_slide(opened, model, config, trim=False)  # whole tiles only: the network's speed per tile
        tiles = np.stack([read_tile(plan, tile) for tile in plan.tiles[: args.model_tiles]])
    dtype = autocast_dtype(args.precision, device)
    checkpoint = model.checkpoint

    def run_batch(start: int) -> None:
        batch = images_to_tensor(tiles[start : start + args.batch_size], checkpoint.mean, checkpoint.std, device)
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            run_network(model.network, batch, args.tta)

    engine = network_executor(network_thread_shares(device))  # the streams segment runs the network on

    def run_all() -> None:
        list(engine.map(run_batch, range(0, len(tiles), args.batch_size)))
        if device.type == "cuda":
            torch.cuda.synchronize()

    run_all()  # warm-up
    seconds = math.inf
    for _ in range(args.repeats):
        started = time.perf_counter()
        run_all()
        seconds = min(seconds, time.perf_counter() - started)
    queue.put({"tiles": len(tiles), "seconds": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def _end_to_end(args: argparse.Namespace, slide: Path, output: Path, queue) -> None:
    from wsi_frgnet.engine.devices import resolve_device
    from wsi_frgnet.engine.inference import load_model
    from wsi_frgnet.engine.pipeline import segment_slide

    model = load_model(args.model, resolve_device(args.device))
    config = SegmentConfig(tile_size=args.tile_size, context=args.context, batch_size=args.batch_size, precision=args.precision, tta=args.tta)
    seconds = math.inf
    for _ in range(args.repeats):
        started = time.perf_counter()
        summary = segment_slide(slide, model, config, output, quiet=True)
        seconds = min(seconds, time.perf_counter() - started)
    queue.put(
        {
            "tiles": summary.tiles,
            "nuclei": summary.nuclei,
            "seconds": seconds,
            "tissue_mm2": summary.tissue_area_mm2,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    )


def _in_child(target, *arguments) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*arguments, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--tissue", type=int, default=4096, help="tissue square side, px at the model's resolution")
    parser.add_argument("--glass-factor", type=int, default=10, help="side of the large slide / side of the small one")
    parser.add_argument("--tile-size", type=int, default=None, help="default: segment's for the device")
    parser.add_argument("--context", type=int, default=None, help="default: segment's for the device")
    parser.add_argument("--batch-size", type=int, default=None, help="default: segment's for the device")
    parser.add_argument("--model-tiles", type=int, default=32, help="tiles for the model-only measurement")
    parser.add_argument("--tta", action="store_true", help="average over mirror images (segment --tta)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each measurement; the fastest is reported")
    args = parser.parse_args()

    from wsi_frgnet.engine.devices import resolve_device
    from wsi_frgnet.model.model_file import load_checkpoint

    # The layout segment would use on this device, for what is not given.
    layout = SegmentConfig(tile_size=args.tile_size, context=args.context, batch_size=args.batch_size).for_device(resolve_device(args.device).type)
    args.tile_size, args.context, args.batch_size = layout.tile_size, layout.context, layout.batch_size

    mpp = load_checkpoint(args.model).microns_per_pixel or 0.25
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        started = time.perf_counter()
        tissue = synthetic_tissue(args.tissue)
        small, large = folder / "small.tiff", folder / "large.tiff"
        write_slide(small, tissue, args.tissue + 1024, mpp)
        write_slide(large, tissue, (args.tissue + 1024) * args.glass_factor, mpp)
        del tissue
        print(f"slides written in {time.perf_counter() - started:.1f} s: {args.tissue}² px of tissue at {mpp} µm/px; "
              f"{args.tissue + 1024}² and {(args.tissue + 1024) * args.glass_factor}² px slides")
        model = _in_child(_model_only, args, small)
        model_mpx = model["tiles"] * args.tile_size**2 / model["seconds"] / 1e6
        print(f"model only   : {model['tiles'] / model['seconds']:.2f} tiles/s ({args.tile_size}² px, context {args.context}, batch {args.batch_size}, "
              f"{args.precision}) = {model_mpx:.2f} Mpx/s of network input")
        for name, slide in (("small slide", small), ("large slide", large)):
            result = _in_child(_end_to_end, args, slide, folder / f"{slide.stem}.geojson")
            tiles_per_second = result["tiles"] / result["seconds"]
            tissue_mpx = args.tissue**2 / result["seconds"] / 1e6
            print(f"{name:<13}: {result['tiles']} tiles, {result['nuclei']} nuclei, {result['seconds']:.1f} s, "
                  f"{tiles_per_second:.2f} tiles/s ({100 * tiles_per_second / (model['tiles'] / model['seconds']):.0f} % of model only), "
                  f"{tissue_mpx:.2f} Mpx of tissue/s, peak RSS {result['rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
