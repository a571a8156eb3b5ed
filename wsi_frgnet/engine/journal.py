"""Resume inside a slide: a journal of the tiles already through the network.

While ``segment`` runs, every tile's owned nuclei (working px, before merging) are appended to a
hidden file beside the output, ``.NAME.journal``. When a run is cut short (a crash, a power
cut, SIGKILL, a cluster's time limit, SIGTERM), the next run of the same command reads it back:
journalled tiles are not read nor run through the network again, their nuclei are merged,
measured and written exactly as the first run would have, so the output is the same file.

The journal opens with the run's *identity* (tool version, model file hash, slide file, size and
modification time, µm/px, thresholds and every option): a journal of another run is never
mixed in; it is replaced, with a warning. Records are length-prefixed, so a record cut by the
interruption is recognised and dropped. The journal is removed when the output is complete.
Frames: tile-owned nuclei in working px, as the pipeline passes them to the deduplicator.
"""

from __future__ import annotations

import logging
import os
import struct
import time
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson

from wsi_frgnet.nucleus import Nucleus

logger = logging.getLogger(__name__)

MAGIC = b"frgnet-wsi journal 1\n"
_LENGTH = struct.Struct("<Q")
SYNC_SECONDS = 5.0  # at most this much finished work is lost on a power cut


def journal_path(output: Path) -> Path:
    """``nuclei.geojson`` → ``.nuclei.geojson.journal`` beside it."""
    return output.with_name(f".{output.name}.journal")


class TileJournal:
    """The journal of one output: what an earlier run finished (:attr:`done`), and appending."""

    def __init__(self, path: Path, identity: dict[str, Any], fresh: bool = False) -> None:
        """Open ``path`` for ``identity``: read what it holds when it belongs to the same run
        (unless ``fresh``), else start it anew."""
        self.path = Path(path)
        self.identity = orjson.dumps(identity, option=orjson.OPT_SORT_KEYS)
        self.done: dict[int, tuple[list[Nucleus], int]] = {}
        kept = 0
        if not fresh and self.path.exists():
            kept = self._read()
        if kept:
            self._handle: BinaryIO = open(self.path, "r+b")
            self._handle.seek(kept)
            self._handle.truncate()
            logger.info("%s: resuming, %d finished tile(s) taken from the journal", self.path.name, len(self.done))
        else:
            self.done.clear()
            self._handle = open(self.path, "wb")
            self._write(MAGIC)
            self._write(_LENGTH.pack(len(self.identity)) + self.identity)
            self._sync()
        self._last_sync = time.monotonic()

    def _read(self) -> int:
        """Load the records of a journal of this run; the byte offset after the last whole one
        (0 when the journal belongs to another run or is unreadable)."""
        data = self.path.read_bytes()
        if not data.startswith(MAGIC):
            logger.warning("%s: not a journal of this version; starting the slide over", self.path.name)
            return 0
        offset = len(MAGIC)
        identity, offset = _record(data, offset)
        if identity != self.identity:
            logger.warning("%s: journal of a run with another model, slide or options; starting the slide over", self.path.name)
            return 0
        while True:
            payload, following = _record(data, offset)
            if payload is None:
                return offset
            tile, nuclei, oversized = _decode(payload)
            self.done[tile] = (nuclei, oversized)
            offset = following

    def add(self, tile: int, nuclei: list[Nucleus], oversized: int) -> None:
        """Record one finished tile: handed to the operating system at once (a killed process
        loses nothing), synced to the disk at least every ``SYNC_SECONDS`` (a power cut)."""
        payload = _encode(tile, nuclei, oversized)
        self._write(_LENGTH.pack(len(payload)) + payload)
        self._handle.flush()
        if time.monotonic() - self._last_sync > SYNC_SECONDS:
            self._sync()
            self._last_sync = time.monotonic()

    def close(self, remove: bool = False) -> None:
        """Close the journal; ``remove``: the output is complete, the journal goes."""
        if not self._handle.closed:
            self._sync()
            self._handle.close()
        if remove:
            self.path.unlink(missing_ok=True)

    def _write(self, data: bytes) -> None:
        self._handle.write(data)

    def _sync(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())


def _record(data: bytes, offset: int) -> tuple[bytes | None, int]:
    """(payload, next offset) of the record at ``offset``, or (None, offset) when it is cut."""
    if offset + _LENGTH.size > len(data):
        return None, offset
    (length,) = _LENGTH.unpack_from(data, offset)
    start = offset + _LENGTH.size
    if start + length > len(data):
        return None, offset
    return data[start : start + length], start + length


def _encode(tile: int, nuclei: list[Nucleus], oversized: int) -> bytes:
    """One tile's nuclei, bit for bit: rings as float32 when that is exact (they come from the
    network so) else float64, scores and guide values as float64; zlib at its fastest level."""
    lengths = np.array([len(nucleus.polygon) for nucleus in nuclei], dtype=np.int64)
    rings = np.concatenate([nucleus.polygon for nucleus in nuclei]).astype(np.float64) if nuclei else np.zeros((0, 2))
    narrow = rings.astype(np.float32)
    exact = bool(np.array_equal(narrow.astype(np.float64), rings, equal_nan=True))
    values = np.array([[n.score, n.guide] for n in nuclei], dtype=np.float64).reshape(-1, 2)
    header = orjson.dumps({"tile": tile, "oversized": oversized, "count": len(nuclei), "float32": exact})
    body = lengths.tobytes() + values.tobytes() + (narrow if exact else rings).tobytes()
    return _LENGTH.pack(len(header)) + header + zlib.compress(body, 1)


def _decode(payload: bytes) -> tuple[int, list[Nucleus], int]:
    (size,) = _LENGTH.unpack_from(payload, 0)
    header = orjson.loads(payload[_LENGTH.size : _LENGTH.size + size])
    body = zlib.decompress(payload[_LENGTH.size + size :])
    count = header["count"]
    lengths = np.frombuffer(body, dtype=np.int64, count=count)
    values = np.frombuffer(body, dtype=np.float64, count=2 * count, offset=8 * count).reshape(-1, 2)
    dtype = np.float32 if header["float32"] else np.float64
    rings = np.frombuffer(body, dtype=dtype, offset=8 * count + 16 * count).reshape(-1, 2).astype(np.float64)
    pieces = np.split(rings, np.cumsum(lengths)[:-1]) if count else []
    nuclei = [Nucleus(ring, float(score), float(guide)) for ring, (score, guide) in zip(pieces, values)]
    return int(header["tile"]), nuclei, int(header["oversized"])
