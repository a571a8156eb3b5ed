"""Annotations of a fine-tuning input, mapped onto the tiles that ``segment`` reads.

Frames: tiles are in *working px*, the pixels of the model's resolution (``pipeline``);
``factor`` = level-0 px per working px. A tile's labels cover its read rectangle: an int32
(h, w) instance map (0 = background) in tile px, pixel (r, c) covering [c, c+1) x [r, r+1),
and optionally an (h, w) bool mask of pixels whose nuclei were not annotated ("unknown").

Two sources:

- :class:`PolygonLabels`: a QuPath GeoJSON export beside a slide or image
  (:func:`annotation_beside`), polygons in QuPath's frame: level-0 px minus the slide's
  OpenSlide bounds offset (``pipeline.output_offset``; plain images have none). When the file
  holds reviewed regions (``annotations.read_nuclei_and_regions``), the nuclei inside them are
  complete labels, tile pixels outside them are unknown, and nuclei outside them are not
  read. Without regions the labels are partial: the rule of METHOD_NOTES.md §4 applies to the whole
  tile (unlabelled guide-positive cells are never taught as background).
- :class:`LabelMapLabels`: the label map (and ``unknown/`` mask) of a training-data folder
  image (``dataset_folder``), in image px = level-0 px, sampled at each working px's centre.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from wsi_frgnet.config import SegmentConfig
from wsi_frgnet.engine.planning import output_offset
from wsi_frgnet.engine.tiling import Tile
from wsi_frgnet.engine.tissue import tiles_in_polygons
from wsi_frgnet.errors import InputError
from wsi_frgnet.geometry.raster import polygons_to_label_map
from wsi_frgnet.io.geojson import GEOJSON_SUFFIXES, read_nuclei_and_regions
from wsi_frgnet.io.slide import Slide

logger = logging.getLogger(__name__)

BESIDE_SUFFIXES = tuple(suffix for suffix in GEOJSON_SUFFIXES if suffix.startswith(".geojson"))



def annotation_beside(path: Path) -> Path | None:
    """The QuPath GeoJSON export beside a slide or image (same name, ``.geojson`` or
    ``.geojson.gz`` instead of its extension), or None. InputError when both exist. Plain
    ``.json`` files are not looked for: beside a slide they are often scanner metadata."""
    path = Path(path)
    found = [candidate for suffix in BESIDE_SUFFIXES if (candidate := path.with_name(path.stem + suffix)).is_file()]
    if len(found) > 1:
        raise InputError(f"{path}: ambiguous annotations, both {found[0].name} and {found[1].name} exist; keep only one")
    return found[0] if found else None


def _rectangle(tile: Tile) -> shapely.Polygon:
    x, y, width, height = tile.read
    return shapely.box(x, y, x + width, y + height)


def _inside_mask(polygon: shapely.Polygon, origin: tuple[float, float], shape: tuple[int, int]) -> np.ndarray:
    """Pixels of a (h, w) tile whose centre lies in ``polygon`` (working px; holes excluded)."""
    def rings(geometries: list) -> list[np.ndarray]:
        return [np.asarray(ring.coords, dtype=np.float64) - origin for ring in geometries]

    inside = polygons_to_label_map(rings([polygon.exterior]), shape) > 0
    if polygon.interiors:
        inside &= ~(polygons_to_label_map(rings(list(polygon.interiors)), shape) > 0)
    return inside


@dataclass
class PolygonLabels:
    """Nuclei (and reviewed regions) of a GeoJSON file, in working px, nuclei in file order."""

    path: Path
    nuclei: np.ndarray  # shapely polygons
    regions: list[shapely.Polygon]

    def __post_init__(self) -> None:
        self._tree = shapely.STRtree(self.nuclei)

    @property
    def partial(self) -> bool:
        """Partial labels (no reviewed region): METHOD_NOTES.md §4 applies to every tile."""
        return not self.regions

    def description(self) -> dict[str, Any]:
        """What provenance records about these annotations."""
        rule = "reviewed regions (unknown outside)" if self.regions else "partial (METHOD_NOTES.md §4)"
        return {"file": str(self.path), "rule": rule, "nuclei": len(self.nuclei), "regions": len(self.regions)}

    def candidate_tiles(self, tiles: list[Tile]) -> list[Tile]:
        """The tiles that overlap a reviewed region, or (without regions) an annotated nucleus."""
        return tiles_in_polygons(tiles, self.regions or list(self.nuclei))

    def label(self, tile: Tile) -> tuple[np.ndarray, np.ndarray | None]:
        """(labels, unknown or None) of the tile's read rectangle (see the module docstring)."""
        x, y, width, height = tile.read
        rectangle = _rectangle(tile)
        hits = np.sort(self._tree.query(rectangle, predicate="intersects"))
        rings = [np.asarray(polygon.exterior.coords, dtype=np.float64) - (x, y) for polygon in self.nuclei[hits]]
        labels = polygons_to_label_map(rings, (height, width))
        if not self.regions:
            return labels, None
        reviewed = np.zeros((height, width), dtype=bool)
        for region in self.regions:
            for part in shapely.get_parts(shapely.clip_by_rect(region, x, y, x + width, y + height)):
                if isinstance(part, shapely.Polygon) and not part.is_empty:
                    reviewed |= _inside_mask(part, (x, y), (height, width))
        return labels, ~reviewed


def polygon_labels(path: Path, slide: Slide, factor: float) -> PolygonLabels:
    """Read a QuPath GeoJSON export of ``slide`` (QuPath's frame, see the module docstring)
    into working px (``factor`` level-0 px per working px).

    InputError when no polygon lies on the slide ("annotation file does not match"); polygons
    off the slide while others are on it are dropped with a warning.
    """
    path = Path(path)
    nuclei, regions = read_nuclei_and_regions(path)
    offset_x, offset_y = output_offset(slide, SegmentConfig())
    left, top, width, height = slide.bounds
    frame = shapely.box(left - offset_x, top - offset_y, left - offset_x + width, top - offset_y + height)
    polygons = np.asarray([*nuclei, *regions], dtype=object)
    on_slide = shapely.intersects(polygons, frame) & ~shapely.touches(polygons, frame)
    if not on_slide.any():
        x0, y0, x1, y1 = shapely.total_bounds(polygons)
        raise InputError(
            f"{path}: annotation file does not match {slide.path}: all {len(polygons)} polygon(s) lie outside its "
            f"{width}x{height} px (they span x {x0:g}..{x1:g}, y {y0:g}..{y1:g})"
        )
    if not on_slide.all():
        logger.warning("%s: %d of %d polygon(s) lie outside %s; ignored", path, int((~on_slide).sum()), len(polygons), slide.path)
    kept_nuclei = polygons[: len(nuclei)][on_slide[: len(nuclei)]]
    kept_regions = list(polygons[len(nuclei):][on_slide[len(nuclei):]])
    if kept_regions:
        reviewed = shapely.union_all(kept_regions)
        inside = shapely.covers(reviewed, shapely.point_on_surface(kept_nuclei))
        logger.info("%s: %d reviewed region(s) holding %d nuclei (%d nuclei outside them not read)",
                    path, len(kept_regions), int(inside.sum()), int((~inside).sum()))
        kept_nuclei = kept_nuclei[inside]
    else:
        logger.info("%s: %d nuclei, no reviewed region: partial labels", path, len(kept_nuclei))

    def to_working(xy: np.ndarray) -> np.ndarray:
        return (xy + (offset_x, offset_y)) / factor

    return PolygonLabels(
        path,
        np.asarray(shapely.transform(kept_nuclei, to_working), dtype=object),
        list(shapely.transform(np.asarray(kept_regions, dtype=object), to_working)),
    )


@dataclass
class LabelMapLabels:
    """A training-data folder image's label map and unknown mask, (H, W) in image px."""

    labels: np.ndarray
    unknown: np.ndarray | None
    factor: float  # image px per working px
    files: dict[str, Any]  # label file and unknown mask, for provenance

    @property
    def partial(self) -> bool:
        """Never: the labels are complete (outside the unknown mask)."""
        return False

    def description(self) -> dict[str, Any]:
        return {**self.files, "rule": "complete" if self.unknown is None else "complete outside the unknown mask"}

    def candidate_tiles(self, tiles: list[Tile]) -> list[Tile]:
        """Every tile: the whole image is annotated."""
        return tiles

    def label(self, tile: Tile) -> tuple[np.ndarray, np.ndarray | None]:
        """(labels, unknown or None) of the tile's read rectangle: each working px takes the
        image px under its centre; outside the image, background."""
        labels = self._sample(self.labels, tile)
        return labels, None if self.unknown is None else self._sample(self.unknown, tile)

    def _sample(self, array: np.ndarray, tile: Tile) -> np.ndarray:
        x, y, width, height = tile.read
        columns = np.floor((x + np.arange(width) + 0.5) * self.factor).astype(np.int64)
        rows = np.floor((y + np.arange(height) + 0.5) * self.factor).astype(np.int64)
        column_ok = (columns >= 0) & (columns < array.shape[1])
        row_ok = (rows >= 0) & (rows < array.shape[0])
        out = np.zeros((height, width), dtype=array.dtype)
        out[np.ix_(row_ok, column_ok)] = array[np.ix_(rows[row_ok], columns[column_ok])]
        return out
