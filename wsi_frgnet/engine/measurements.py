"""Measurements of nuclei and cells, under the names QuPath gives them.

Shape, as QuPath's ``ObjectMeasurements.addShapeMeasurements`` (what StarDist's
``measureShape()`` calls): ``Area µm^2``, ``Length µm`` (the perimeter), ``Circularity``
(4π area / perimeter²), ``Solidity`` (area / convex-hull area), ``Max diameter µm`` (diameter of
the smallest enclosing circle), ``Min diameter µm`` (smallest caliper width, GEOS's minimum
width as JTS's ``MinimumDiameter`` in QuPath), and
``Eccentricity`` (of the ellipse with the polygon's second moments, as QuPath's cell detection
reports it). Cells prefix them with ``Nucleus: `` and ``Cell: `` and add
``Nucleus/Cell area ratio``. Without a known µm/px the units are ``px^2`` / ``px``.

Intensity, as ``ObjectMeasurements.addIntensityMeasurements`` (StarDist's
``measureIntensity()``) names them for the colour-deconvolved channels ``Hematoxylin`` and
``Eosin``: ``Hematoxylin: Mean``, ``Std.Dev.``, ``Min``, ``Max`` (and the same for Eosin), with a
``Nucleus: ``, ``Cytoplasm: `` or ``Cell: `` prefix for cells. Values are optical densities from
QuPath's default H&E stain vectors (not estimated per slide): OD = -log10(max(value, 1) / 255)
per RGB channel, then unmixed with the inverse of the stain matrix (haematoxylin, eosin, and
their normalised cross product as the third stain).
"""

from __future__ import annotations

import numpy as np
import shapely

from wsi_frgnet.geometry.outlines import stacked_by_length

HEMATOXYLIN = np.array([0.65111, 0.70119, 0.29049])  # QuPath "H&E default"
EOSIN = np.array([0.2159, 0.8012, 0.5581])
STAINS = ("Hematoxylin", "Eosin")
STATISTICS = ("Mean", "Std.Dev.", "Min", "Max")


def _unmixing() -> np.ndarray:
    """(3, 3) matrix taking per-pixel optical densities (R, G, B) to stain amounts."""
    vectors = [HEMATOXYLIN / np.linalg.norm(HEMATOXYLIN), EOSIN / np.linalg.norm(EOSIN)]
    residual = np.cross(vectors[0], vectors[1])
    matrix = np.stack([*vectors, residual / np.linalg.norm(residual)])
    return np.linalg.inv(matrix).astype(np.float32)


_UNMIX = _unmixing()
_OD_LOOKUP = (-np.log10(np.maximum(np.arange(256), 1) / 255.0)).astype(np.float32)


def stain_densities(rgb: np.ndarray) -> np.ndarray:
    """(2, H, W) float32 haematoxylin and eosin optical densities of an (H, W, 3) uint8 image."""
    density = _OD_LOOKUP[rgb]  # (H, W, 3)
    return np.moveaxis(density @ _UNMIX[:, :2], -1, 0)


def label_statistics(planes: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """(channels, 4, count) mean, standard deviation, min and max of each plane of ``planes``
    (channels, H, W) over the pixels of each label 1..count of ``labels`` (H, W); NaN for a
    label without pixels. Labelled pixels are sorted by label once for every statistic."""
    flat_labels = labels.ravel()
    where = np.flatnonzero(flat_labels)
    order = where[np.argsort(flat_labels[where], kind="stable")]
    sorted_labels = flat_labels[order]
    present, starts = np.unique(sorted_labels, return_index=True)
    out = np.full((len(planes), 4, count), np.nan)
    if not len(present):
        return out
    pixels = np.diff(np.append(starts, len(order))).astype(np.float64)
    slots = present - 1
    for channel, plane in enumerate(planes):
        values = plane.ravel()[order].astype(np.float64)
        mean = np.add.reduceat(values, starts) / pixels
        squares = np.add.reduceat(values * values, starts) / pixels
        out[channel, 0, slots] = mean
        out[channel, 1, slots] = np.sqrt(np.maximum(squares - mean * mean, 0.0))
        out[channel, 2, slots] = np.minimum.reduceat(values, starts)
        out[channel, 3, slots] = np.maximum.reduceat(values, starts)
    return out


def intensity_measurements(densities: np.ndarray, labels: np.ndarray, count: int, prefix: str = "") -> dict[str, np.ndarray]:
    """Stain statistics per label 1..count (``stain_densities`` planes, a label map of the same
    window), named ``{prefix}Hematoxylin: Mean`` and so on."""
    statistics = label_statistics(densities, labels, count)
    return {
        f"{prefix}{stain}: {name}": statistics[channel, index]
        for channel, stain in enumerate(STAINS)
        for index, name in enumerate(STATISTICS)
    }


def shape_measurements(polygons: np.ndarray, microns_per_pixel: float | None, prefix: str = "") -> dict[str, np.ndarray]:
    """Shape measurements (module docstring) of shapely polygons (n,) given in px, converted
    with ``microns_per_pixel`` (None: px)."""
    scale = 1.0 if microns_per_pixel is None else float(microns_per_pixel)
    unit = "px" if microns_per_pixel is None else "µm"
    area = shapely.area(polygons)
    length = shapely.length(polygons)
    with np.errstate(invalid="ignore", divide="ignore"):
        circularity = 4.0 * np.pi * area / (length * length)
        solidity = area / shapely.area(shapely.convex_hull(polygons))
    return {
        f"{prefix}Area {unit}^2": area * scale**2,
        f"{prefix}Length {unit}": length * scale,
        f"{prefix}Circularity": circularity,
        f"{prefix}Solidity": solidity,
        f"{prefix}Max diameter {unit}": 2.0 * shapely.minimum_bounding_radius(polygons) * scale,
        f"{prefix}Min diameter {unit}": shapely.length(shapely.minimum_width(polygons)) * scale,
        f"{prefix}Eccentricity": _eccentricities(polygons),
    }


def _rings(geometries: np.ndarray) -> list[np.ndarray]:
    """Closed exterior rings (m, 2) of polygons."""
    coordinates, owners = shapely.get_coordinates(shapely.get_exterior_ring(geometries), return_index=True)
    return np.split(coordinates, np.flatnonzero(np.diff(owners)) + 1) if len(coordinates) else []


def _eccentricities(polygons: np.ndarray) -> np.ndarray:
    """(n,) eccentricity of the ellipse with each polygon's second moments of area."""
    out = np.zeros(len(polygons))
    for indices, rings in stacked_by_length(_rings(polygons)):
        relative = rings - rings[:, :1]
        x, y = relative[:, :-1, 0], relative[:, :-1, 1]
        x1, y1 = relative[:, 1:, 0], relative[:, 1:, 1]
        cross = x * y1 - x1 * y
        area = cross.sum(axis=1) / 2.0
        safe = np.where(np.abs(area) < 1e-12, 1.0, area)
        cx = ((x + x1) * cross).sum(axis=1) / (6.0 * safe)
        cy = ((y + y1) * cross).sum(axis=1) / (6.0 * safe)
        xx = ((x * x + x * x1 + x1 * x1) * cross).sum(axis=1) / (12.0 * safe) - cx * cx
        yy = ((y * y + y * y1 + y1 * y1) * cross).sum(axis=1) / (12.0 * safe) - cy * cy
        xy = ((x * y1 + 2 * x * y + 2 * x1 * y1 + x1 * y) * cross).sum(axis=1) / (24.0 * safe) - cx * cy
        spread = np.sqrt(((xx - yy) / 2.0) ** 2 + xy * xy)
        major, minor = (xx + yy) / 2.0 + spread, (xx + yy) / 2.0 - spread
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.sqrt(np.clip(1.0 - minor / major, 0.0, 1.0))
        out[indices] = np.where(np.abs(area) < 1e-12, 0.0, values)
    return out
