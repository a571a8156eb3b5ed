"""Pictures for people: nucleus outlines drawn over the image."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from wsi_frgnet.nucleus import Nucleus

OUTLINE_COLOUR = (0, 255, 0)


def draw_outlines(rgb: np.ndarray, nuclei: list[Nucleus], colour: tuple[int, int, int] = OUTLINE_COLOUR) -> np.ndarray:
    """Copy of ``rgb`` (H, W, 3) uint8 with each nucleus polygon outlined, 1 px wide."""
    picture = Image.fromarray(np.ascontiguousarray(rgb))
    draw = ImageDraw.Draw(picture)
    for nucleus in nuclei:
        # Pixel centres are at index + 0.5 in polygon coordinates; PIL draws at integer centres.
        points = [(float(x) - 0.5, float(y) - 0.5) for x, y in nucleus.polygon]
        draw.line(points, fill=colour, width=1)
    return np.asarray(picture)
