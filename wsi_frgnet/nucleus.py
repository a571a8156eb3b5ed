"""The unit every stage passes on: one detected nucleus (outline, score, guide value, and at
the end its cell and measurements)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import shapely


@dataclass(frozen=True)
class Nucleus:
    """One detected nucleus.

    polygon: (n, 2) float64 (x, y) closed ring (last point == first), valid, in the px of the
    stage that holds it (tile px after decoding, working px while merging, level-0 px on output).
    score: detection probability in [0, 1]. guide: max of the predicted guide inside the
    polygon, in [0, 1], or NaN when the model has no guide.
    cell: (m, 2) closed ring of the cell around the nucleus, same frame, or None (no cells).
    measurements: QuPath-named measurements (``wsi_frgnet.engine.measurements``), in µm where
    the µm/px is known; empty until the slide pipeline measures the nucleus.
    """

    polygon: np.ndarray
    score: float
    guide: float
    cell: np.ndarray | None = None
    measurements: dict[str, float] = field(default_factory=dict)

    @property
    def centroid(self) -> tuple[float, float]:
        """Area centroid (x, y), px of the polygon's frame."""
        point = shapely.Polygon(self.polygon).centroid
        return float(point.x), float(point.y)
