"""The measurement table beside the GeoJSON: one CSV row per object, streamed with it.

Columns: ``Object ID`` (the feature's id), ``Object type`` (detection or cell), ``Centroid X px``,
``Centroid Y px`` (the centroid of the object's geometry, in the GeoJSON's frame: level-0 px,
less the bounds offset), ``Centroid X µm``, ``Centroid Y µm`` (those times the slide's µm/px;
empty when unknown), then every measurement under its QuPath name, in the order of the first
object. A measurement an object lacks is an empty cell.
"""

from __future__ import annotations

import csv
import io
import math
from typing import BinaryIO

import shapely

FIXED = ("Object ID", "Object type", "Centroid X px", "Centroid Y px", "Centroid X µm", "Centroid Y µm")


class TableWriter:
    """Writes rows for features as they stream by (UTF-8 CSV, header before the first row)."""

    def __init__(self, handle: BinaryIO, microns_per_pixel: float | None) -> None:
        self._text = io.TextIOWrapper(handle, encoding="utf-8", newline="", write_through=True)
        self._csv = csv.writer(self._text)
        self._mpp = microns_per_pixel
        self._names: list[str] | None = None

    def add(self, feature: dict) -> None:
        measurements = feature["properties"]["measurements"]
        if self._names is None:
            self._names = list(measurements)
            self._csv.writerow([*FIXED, *self._names])
        x, y = shapely.centroid(shapely.geometry.shape(feature["geometry"])).coords[0]
        in_microns = ["", ""] if self._mpp is None else [_number(x * self._mpp), _number(y * self._mpp)]
        values = [_number(measurements[name]) if name in measurements else "" for name in self._names]
        self._csv.writerow([feature["id"], feature["properties"]["objectType"], _number(x), _number(y), *in_microns, *values])

    def close(self) -> None:
        """Finish the table (a header alone when no object came); the handle stays open."""
        if self._names is None:
            self._csv.writerow(FIXED)
        self._text.flush()
        self._text.detach()


def _number(value: float | str) -> str:
    """A value as QuPath's tables print it: up to 4 decimals, NaN for missing numbers."""
    if isinstance(value, str):
        return value
    return "NaN" if not math.isfinite(value) else f"{round(value, 4):g}" if abs(value) < 1e15 else repr(value)
