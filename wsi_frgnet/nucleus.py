"""The unit every stage passes on: one detected nucleus (outline, score, guide value)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely


@dataclass(frozen=True)
class Nucleus:
    """One detected nucleus.

    polygon: (n, 2) float64 (x, y) closed ring (last point == first), valid, in the px of the
    stage that holds it (tile px after decoding, working px while merging, level-0 px on output).
    score: detection probability in [0, 1]. guide: max of the predicted guide inside the
    polygon, in [0, 1], or NaN when the model has no guide.
    """

    polygon: np.ndarray
    score: float
    guide: float

    @property
    def centroid(self) -> tuple[float, float]:
        """Area centroid (x, y), px of the polygon's frame."""
        point = shapely.Polygon(self.polygon).centroid
        return float(point.x), float(point.y)
