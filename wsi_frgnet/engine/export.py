"""Nuclei → QuPath GeoJSON: one Feature per nucleus, streamed to disk atomically.

The contract is docs/QUPATH_GEOJSON.md (read from QuPath's own reader). In short: a compact
UTF-8 ``FeatureCollection``; per nucleus a Feature with a UUID ``id``, a closed, valid
``Polygon`` in level-0 px of the full slide with at most 2 decimals, and ``properties`` holding
``objectType: "detection"``, a ``classification`` object with ``name`` and ``color`` and a flat
``measurements`` map (detection probability, guide value and the nucleus' own measurements);
never a ``type`` key inside ``properties``. A nucleus with a cell becomes ``objectType:
"cell"`` with the cell as ``geometry`` and the nucleus as ``nucleusGeometry``.

Frames and units: input polygons are level-0 px of the slide (x right, y down, pixel centre at
index + 0.5). ``ExportSettings.offset`` (OpenSlide ``bounds-x``/``bounds-y``) is subtracted,
then coordinates are rounded to 0.01 px (QuPath's grid). Rounding can merge consecutive points
or make a ring self-touch: consecutive duplicates are dropped, and an invalid ring is repaired
with shapely ``make_valid`` (largest polygon part kept) or the nucleus is skipped.

Ids are UUIDv5 (RFC 4122: SHA-1 of a namespace and a name) of the ``slide_id`` and the rounded
polygon, so a re-run writes the same ids; identical polygons of one slide are written once.

Serialisation uses orjson (coordinates rounded to 2 and measurements to 4 decimals before
encoding, printed in their shortest round-trip form; non-finite measurements become strings).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import BinaryIO

import numpy as np
import orjson
import shapely

from wsi_frgnet.engine.table import TableWriter
from wsi_frgnet.errors import InputError
from wsi_frgnet.io.atomic import atomic_write
from wsi_frgnet.io.geojson import GEOJSON_SUFFIXES, geojson_suffix
from wsi_frgnet.nucleus import Nucleus

logger = logging.getLogger(__name__)

#: UUIDv5 namespace of nucleus ids (= uuid5(NAMESPACE_URL, "https://wsi-frgnet/nucleus")).
NUCLEUS_NAMESPACE = uuid.UUID("2aece587-2bca-5155-9077-598276f43ca9")
DEFAULT_COLOUR = (0, 255, 0)
COORDINATE_DECIMALS = 2  # QuPath snaps to a 0.01 px grid
MEASUREMENT_DECIMALS = 4
GZIP_LEVEL = 5  # measured: level 6's size (~265 B/nucleus) for 2/3 of its time; level 1: 312 B
_RECENT_IDS = 200_000  # ids remembered to skip repeated polygons
_BATCH = 1024  # nuclei prepared (rounded, validated, measured) together with vectorised shapely
_HEADER = b'{"type":"FeatureCollection","features":['
_FOOTER = b"]}"


@dataclass(frozen=True)
class ExportSettings:
    """How nuclei become QuPath features.

    microns_per_pixel: level-0 µm/px, for the table's centroids in µm (None: left empty).
    offset: (x, y) level-0 px subtracted from every coordinate (OpenSlide bounds-x / bounds-y
        when the slide declares them, because QuPath crops to the bounds).
    slide_id: identifies the slide in the deterministic ids (e.g. file name + dimensions).
    classification: QuPath class name; colour: its (r, g, b) colour, ints 0-255.
    """

    microns_per_pixel: float | None
    offset: tuple[float, float] = (0.0, 0.0)
    slide_id: str = ""
    classification: str = "Nucleus"
    colour: tuple[int, int, int] = DEFAULT_COLOUR

    def __post_init__(self) -> None:
        mpp = self.microns_per_pixel
        if mpp is not None and not (isinstance(mpp, (int, float)) and math.isfinite(mpp) and mpp > 0):
            raise InputError(f"microns per pixel must be a positive number, got {mpp!r}")
        if len(self.offset) != 2 or not all(math.isfinite(float(v)) for v in self.offset):
            raise InputError(f"export offset must be two finite numbers (x, y), got {self.offset!r}")
        colour = tuple(self.colour)
        if len(colour) != 3 or not all(isinstance(c, (int, np.integer)) and 0 <= c <= 255 for c in colour):
            raise InputError(f"classification colour must be three ints 0-255 (r, g, b), got {self.colour!r}")
        if not self.classification:
            raise InputError("classification name must not be empty")


# --------------------------------------------------------------------------------------------
# Geometry: offset, rounding, de-duplication, validity, measurements (vectorised per batch)


@dataclass(frozen=True)
class _Shape:
    ring: np.ndarray  # (m, 2) float64 rounded, not closed, no consecutive duplicates, m >= 3


def _round(coords: np.ndarray) -> np.ndarray:
    # + 0.0 turns -0.0 into 0.0, so "-0.0" is never written.
    return np.round(coords, COORDINATE_DECIMALS) + 0.0


def _drop_repeats(ring: np.ndarray) -> np.ndarray:
    """Drop points equal to their cyclic successor (the ring is not closed)."""
    repeats = (ring == np.roll(ring, -1, axis=0)).all(axis=1)
    return ring[~repeats]


def _polygon_parts(geometry: shapely.Geometry) -> list[shapely.Polygon]:
    if isinstance(geometry, shapely.Polygon):
        return [] if geometry.is_empty else [geometry]
    if hasattr(geometry, "geoms"):  # Multi* and GeometryCollection, possibly nested
        return [part for member in geometry.geoms for part in _polygon_parts(member)]
    return []


def _repair(polygon: shapely.Polygon, attempts: int = 3) -> _Shape | None:
    """make_valid, keep the largest polygon's outline, re-round; None when nothing usable."""
    for _ in range(attempts):
        parts = _polygon_parts(shapely.make_valid(polygon))
        if not parts:
            return None
        largest = max(parts, key=lambda part: part.area)
        ring = _drop_repeats(_round(np.asarray(largest.exterior.coords)[:-1]))
        if len(ring) < 3:
            return None
        polygon = shapely.Polygon(ring)
        if polygon.is_valid and polygon.area > 0:
            return _Shape(ring)
    return None


def _prepare(polygons: Sequence[np.ndarray], offset: tuple[float, float]) -> list[_Shape | None]:
    """Offset, round, de-duplicate and validate a batch of rings; None for a skipped one."""
    rings = []
    for polygon in polygons:
        ring = np.asarray(polygon, dtype=np.float64)
        if ring.ndim != 2 or ring.shape[1] != 2:
            raise ValueError(f"nucleus polygon must be an (n, 2) array of (x, y), got shape {ring.shape}")
        if len(ring) > 1 and ring[0, 0] == ring[-1, 0] and ring[0, 1] == ring[-1, 1]:
            ring = ring[:-1]  # handled unclosed; closed again when written
        rings.append(ring)
    count = len(rings)
    lengths = np.fromiter((len(ring) for ring in rings), dtype=np.intp, count=count)
    if lengths.sum() == 0:
        return [None] * count
    coords = _round(np.concatenate(rings) - np.asarray(offset, dtype=np.float64))
    owner = np.repeat(np.arange(count), lengths)
    starts = np.cumsum(lengths) - lengths
    following = np.arange(len(coords)) + 1
    nonempty = lengths > 0
    following[(starts + lengths - 1)[nonempty]] = starts[nonempty]  # cyclic successor
    keep = ~(coords == coords[following]).all(axis=1)
    finite = np.ones(count, dtype=bool)
    finite[owner[~np.isfinite(coords).all(axis=1)]] = False
    keep &= finite[owner]
    kept_lengths = np.bincount(owner[keep], minlength=count)
    usable = kept_lengths >= 3
    keep &= usable[owner]
    shapes: list[_Shape | None] = [None] * count
    if not usable.any():
        return shapes
    kept = coords[keep]
    compact_index = (np.cumsum(usable) - 1)[owner[keep]]
    polygons = shapely.polygons(shapely.linearrings(kept, indices=compact_index))
    valid = shapely.is_valid(polygons)
    areas = shapely.area(polygons)
    pieces = np.split(kept, np.cumsum(kept_lengths[usable])[:-1])
    for slot, (index, ring) in enumerate(zip(np.flatnonzero(usable), pieces)):
        if valid[slot] and areas[slot] > 0:
            shapes[index] = _Shape(ring)
        else:
            shapes[index] = _repair(polygons[slot])
    return shapes


# --------------------------------------------------------------------------------------------
# Features


def _measurement_column(values: Sequence[float]) -> list[float | str]:
    """JSON-safe measurements: numbers rounded to MEASUREMENT_DECIMALS, non-finite values as
    the strings "NaN" / "Infinity" / "-Infinity" (QuPath's convention)."""
    array = np.asarray(values, dtype=np.float64)
    column: list[float | str] = (np.round(array, MEASUREMENT_DECIMALS) + 0.0).tolist()
    for index in np.flatnonzero(~np.isfinite(array)):
        value = array[index]
        column[index] = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return column


def _uuid5_string(digest: bytes) -> str:
    """The RFC 4122 version-5 UUID string of a SHA-1 digest (as uuid.uuid5, without the object)."""
    raw = bytearray(digest[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50  # version 5
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


class _FeatureMaker:
    """Builds feature dicts for one ExportSettings (constant parts computed once)."""

    def __init__(self, settings: ExportSettings) -> None:
        self.id_prefix = NUCLEUS_NAMESPACE.bytes + settings.slide_id.encode("utf-8") + b"\x00"
        self.class_name = settings.classification
        self.colour = [int(c) for c in settings.colour]

    def batch(self, nuclei: Sequence[Nucleus], shapes: Sequence[_Shape], cells: Sequence[_Shape | None]) -> Iterator[tuple[bytes, dict]]:
        """(id digest, feature) per nucleus, built one at a time (a batch of live features would
        only feed the garbage collector): a detection, or a cell when it has one. Ids: UUIDv5
        (SHA-1) of the namespace, slide_id and the nucleus' rounded, unclosed ring as
        little-endian float64."""
        columns = {"Detection probability": _measurement_column([float(n.score) for n in nuclei])}
        guides = [float(n.guide) for n in nuclei]
        columns["Guide value"] = _measurement_column(guides)
        names = list(dict.fromkeys(name for nucleus in nuclei for name in nucleus.measurements))
        for name in names:
            columns[name] = _measurement_column([nucleus.measurements.get(name, math.nan) for nucleus in nuclei])
        for index, (nucleus, shape, cell) in enumerate(zip(nuclei, shapes, cells)):
            digest = hashlib.sha1(self.id_prefix + np.ascontiguousarray(shape.ring, dtype="<f8").tobytes()).digest()
            measurements: dict[str, float | str] = {"Detection probability": columns["Detection probability"][index]}
            if not math.isnan(guides[index]):  # no guide: no measurement
                measurements["Guide value"] = columns["Guide value"][index]
            for name in names:
                if name in nucleus.measurements:
                    measurements[name] = columns[name][index]
            feature = {"type": "Feature", "id": _uuid5_string(digest), "geometry": _polygon(cell or shape)}
            if cell is not None:
                feature["nucleusGeometry"] = _polygon(shape)
            feature["properties"] = {
                "objectType": "detection" if cell is None else "cell",
                "classification": {"name": self.class_name, "color": list(self.colour)},
                "measurements": measurements,
            }
            yield digest, feature


def _holding(cell: _Shape | None, kept: tuple[Nucleus, _Shape], offset: tuple[float, float]) -> _Shape:
    """The written cell, holding its written nucleus: rounding both to 0.01 px can leave a
    nucleus edge up to 0.007 px outside its cell; such a cell is joined with its nucleus grown
    by one grid step (its neighbours may then share up to ~0.2 px² with it) and rounded again.
    A cell that does not survive rounding falls back to its nucleus."""
    nucleus, nucleus_shape = kept
    if cell is None:
        return nucleus_shape
    written = shapely.Polygon(nucleus_shape.ring)
    if shapely.Polygon(cell.ring).covers(written):
        return cell
    # The written nucleus, back in the input frame, grown by one grid step: rounding the union
    # again moves its outline by at most 0.0071 px, which the step's 0.01 px absorbs.
    written_input = shapely.Polygon(nucleus_shape.ring + np.asarray(offset, dtype=np.float64))
    grown = shapely.union(shapely.Polygon(nucleus.cell), shapely.buffer(written_input, 10 ** -COORDINATE_DECIMALS))
    parts = [part for part in shapely.get_parts(grown) if isinstance(part, shapely.Polygon)]
    retry = _prepare([np.asarray(max(parts, key=lambda part: part.area).exterior.coords)], offset)[0] if parts else None
    return retry if retry is not None and shapely.Polygon(retry.ring).covers(written) else cell


def _polygon(shape: _Shape) -> dict:
    points = shape.ring.tolist()
    points.append(points[0])
    return {"type": "Polygon", "coordinates": [points]}


def _features(nuclei: Iterable[Nucleus], settings: ExportSettings, stats: dict[str, int]) -> Iterator[dict]:
    """Feature dicts in input order, prepared in batches; skips polygons degenerate after
    rounding and repeated polygons (same id); counts both in ``stats``. A cell whose outline
    does not survive rounding falls back to its nucleus' outline."""
    maker = _FeatureMaker(settings)
    # Repeats come from neighbouring tiles, which arrive close together in the stream: a window
    # of recent ids (8 bytes each) catches them in bounded memory (~15 MB).
    seen: set[bytes] = set()
    recent: deque[bytes] = deque()
    iterator = iter(nuclei)
    while batch := list(islice(iterator, _BATCH)):
        shapes = _prepare([nucleus.polygon for nucleus in batch], settings.offset)
        kept = [(nucleus, shape) for nucleus, shape in zip(batch, shapes) if shape is not None]
        stats["degenerate"] += len(batch) - len(kept)
        if not kept:
            continue
        with_cells = [index for index, (nucleus, _) in enumerate(kept) if nucleus.cell is not None]
        cells: list[_Shape | None] = [None] * len(kept)
        for index, cell in zip(with_cells, _prepare([kept[i][0].cell for i in with_cells], settings.offset)):
            cells[index] = _holding(cell, kept[index], settings.offset)
        for digest, feature in maker.batch([k[0] for k in kept], [k[1] for k in kept], cells):
            key = digest[:8]
            if key in seen:
                stats["duplicate"] += 1
                continue
            seen.add(key)
            recent.append(key)
            if len(recent) > _RECENT_IDS:
                seen.discard(recent.popleft())
            yield feature


# --------------------------------------------------------------------------------------------
# Files


def _check_suffix(path: Path) -> bool:
    """True for gzip output; InputError for a suffix QuPath cannot import."""
    suffix = geojson_suffix(path)
    if suffix is None:
        raise InputError(f"{path}: unsupported output suffix; use one of {', '.join(GEOJSON_SUFFIXES)}")
    return suffix.endswith(".gz")


def write_geojson(path: Path, nuclei: Iterable[Nucleus], settings: ExportSettings, table: Path | None = None) -> int:
    """Stream ``nuclei`` into a QuPath GeoJSON FeatureCollection at ``path``; return the number
    of features written (skipped polygons not counted). With ``table``, also write one CSV row
    per feature there (:mod:`~wsi_frgnet.engine.table`), in the same pass.

    Compact UTF-8 JSON; gzip when ``path`` ends with ``.gz`` (``.geojson.gz`` / ``.json.gz``).
    Nuclei are consumed lazily, in batches, and never all held in memory. Atomic: an exception
    while writing (including KeyboardInterrupt from the producer) leaves neither output (nor
    table) nor temp file; an existing ``path`` is replaced only on success. InputError for an
    unsupported suffix (only .geojson, .json, .geojson.gz, .json.gz) or an unwritable location.
    """
    path = Path(path)
    compressed = _check_suffix(path)
    stats = {"written": 0, "degenerate": 0, "duplicate": 0}

    def write_stream(handle: BinaryIO, rows: TableWriter | None) -> None:
        handle.write(_HEADER)
        separator = b""
        chunk: list[bytes] = []
        for feature in _features(nuclei, settings, stats):
            chunk.append(separator)
            chunk.append(orjson.dumps(feature))
            separator = b","
            stats["written"] += 1
            if rows is not None:
                rows.add(feature)
            if len(chunk) >= 2 * _BATCH:
                handle.write(b"".join(chunk))
                chunk.clear()
        chunk.append(_FOOTER)
        handle.write(b"".join(chunk))
        if rows is not None:
            rows.close()

    def write(handle: BinaryIO, rows: TableWriter | None = None) -> None:
        if not compressed:
            write_stream(handle, rows)
            return
        # filename=path.name: the header records the final name (minus .gz), not the temp file's;
        # mtime=0 keeps the bytes reproducible.
        with gzip.GzipFile(filename=path.name, mode="wb", fileobj=handle, compresslevel=GZIP_LEVEL, mtime=0) as zipped:
            write_stream(zipped, rows)

    if table is None:
        atomic_write(path, write)
    else:  # the table is renamed into place right after the GeoJSON
        atomic_write(Path(table), lambda rows: atomic_write(path, lambda handle: write(handle, TableWriter(rows, settings.microns_per_pixel))))
    if stats["degenerate"] or stats["duplicate"]:
        logger.info(
            "%s: skipped %d polygon(s) degenerate after rounding to 0.01 px and %d repeated polygon(s)",
            path,
            stats["degenerate"],
            stats["duplicate"],
        )
    logger.info("%s: wrote %d objects", path, stats["written"])
    return stats["written"]
