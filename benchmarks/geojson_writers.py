"""GeoJSON writers for QuPath export, timed on synthetic nuclei (prints; asserts nothing).

    .venv/bin/python benchmarks/geojson_writers.py [--count 200000] [--vertices 33]

Compares, on the same nuclei and the same feature dicts (wsi_frgnet.export):
- the feature preparation alone (offset, rounding, validity, measurements, ids; no output),
- stdlib ``json`` streamed (one ``json.dumps`` per feature),
- ``orjson`` streamed (one ``orjson.dumps`` per feature), plain and gzip (levels 1, default, 6),
- the ``geojson`` package (``geojson.Feature`` objects in a ``FeatureCollection``, one ``dump``),
and reports whether each writes the same bytes as stdlib json.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from wsi_frgnet import export
from wsi_frgnet.export import ExportSettings
from wsi_frgnet.postprocess import Nucleus


def synthetic_nuclei(count: int, vertices: int, seed: int = 0) -> list[Nucleus]:
    """Wobbly ellipses of radius 4-12 px spread over a 100000 x 80000 px slide; ``vertices``
    positions per closed ring (the last repeats the first)."""
    rng = np.random.default_rng(seed)
    angles = np.linspace(0.0, 2.0 * np.pi, vertices - 1, endpoint=False)
    centres = rng.uniform((0, 0), (100000, 80000), size=(count, 2))
    radii = rng.uniform(4.0, 12.0, size=(count, 2))
    wobble = 1.0 + 0.05 * np.sin(3 * angles[None, :] + rng.uniform(0, 6.3, size=(count, 1)))
    x = centres[:, :1] + radii[:, :1] * wobble * np.cos(angles)[None, :]
    y = centres[:, 1:] + radii[:, 1:] * wobble * np.sin(angles)[None, :]
    rings = np.stack([x, y], axis=2)
    rings = np.concatenate([rings, rings[:, :1]], axis=1)
    scores = rng.uniform(0.3, 1.0, size=count)
    guides = rng.uniform(0.0, 1.0, size=count)
    return [Nucleus(rings[i], float(scores[i]), float(guides[i])) for i in range(count)]


def _digest(path: Path) -> str:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        import gzip

        data = gzip.decompress(data)
    return hashlib.sha256(data).hexdigest()


def prepare_only(nuclei: list[Nucleus], settings: ExportSettings) -> int:
    stats = {"written": 0, "degenerate": 0, "duplicate": 0}
    return sum(1 for _ in export._features(nuclei, settings, stats))


def write_with_geojson_package(path: Path, nuclei: list[Nucleus], settings: ExportSettings) -> int:
    import geojson

    stats = {"written": 0, "degenerate": 0, "duplicate": 0}
    features = [
        geojson.Feature(id=f["id"], geometry=geojson.Polygon(f["geometry"]["coordinates"]), properties=f["properties"])
        for f in export._features(nuclei, settings, stats)
    ]
    with open(path, "w", encoding="utf-8") as handle:
        geojson.dump(geojson.FeatureCollection(features), handle, ensure_ascii=False, separators=(",", ":"))
    return len(features)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--vertices", type=int, default=33)
    args = parser.parse_args(argv)
    nuclei = synthetic_nuclei(args.count, args.vertices)
    settings = ExportSettings(microns_per_pixel=0.2527, offset=(0.0, 0.0), slide_id="synthetic.svs:100000x80000")
    print(f"{args.count} nuclei, {args.vertices} positions per ring; python {sys.version.split()[0]}")
    print(f"serialisers available: {', '.join(export.SERIALISERS)}; default: {export.DEFAULT_SERIALISER}")

    started = time.perf_counter()
    prepared = prepare_only(nuclei, settings)
    print(f"{'prepare features only (no output)':42s} {time.perf_counter() - started:7.2f} s   {prepared} features")

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        runs = [("json streamed", "out_json.geojson", "json", 6)]
        if "orjson" in export.SERIALISERS:
            runs.append(("orjson streamed", "out_orjson.geojson", "orjson", export.GZIP_LEVEL))
            for level in sorted({1, export.GZIP_LEVEL, 6}):
                default = " (default)" if level == export.GZIP_LEVEL else ""
                runs.append((f"orjson streamed, gzip level {level}{default}", f"out_{level}.geojson.gz", "orjson", level))
        runs.append((f"json streamed, gzip level {export.GZIP_LEVEL}", "out_json.geojson.gz", "json", export.GZIP_LEVEL))
        reference = None
        for label, name, serialiser, level in runs:
            path = folder / name
            started = time.perf_counter()
            count = export._write_features(path, nuclei, settings, serialiser=serialiser, gzip_level=level)
            seconds = time.perf_counter() - started
            digest = _digest(path)
            reference = reference or digest
            size = path.stat().st_size
            same = "same bytes as json" if digest == reference else "DIFFERENT bytes from json"
            print(f"{label:42s} {seconds:7.2f} s {size:13,d} B ({size / count:6.0f} B/nucleus)  {same}")
        try:
            import geojson  # noqa: F401
        except ImportError:
            print("geojson package: not installed")
        else:
            path = folder / "out_geojson_package.geojson"
            started = time.perf_counter()
            count = write_with_geojson_package(path, nuclei, settings)
            seconds = time.perf_counter() - started
            size = path.stat().st_size
            same = "same bytes as json" if _digest(path) == reference else "DIFFERENT bytes from json"
            print(f"{'geojson package (in memory, one dump)':42s} {seconds:7.2f} s {size:13,d} B ({size / count:6.0f} B/nucleus)  {same}")


if __name__ == "__main__":
    main()
