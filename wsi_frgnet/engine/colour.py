"""Colour alignment: before the network sees a slide (or an image), its input normalisation is
shifted so that the slide's mean tissue colour lands where the mean tissue colour of the
model's training data did.

The network reads (RGB / 255 - mean) / std. A slide whose tissue is on average ``c`` brighter,
redder or bluer than the training data is read with ``mean + c`` instead: a constant colour
cast cancels exactly, and a stain that is paler or heavier than the training data's moves back
towards it on average. Colours are RGB in [0, 1]; tissue pixels are those of
:func:`~wsi_frgnet.engine.tissue.tissue_rgb_mean` (glass left out).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from wsi_frgnet.engine.tissue import tissue_rgb_mean

RGB = tuple[float, float, float]


def aligned_mean(mean: Iterable[float], data_mean: Iterable[float], tissue_mean: Iterable[float]) -> RGB:
    """The normalisation mean that reads tissue of mean colour ``tissue_mean`` as a model with
    normalisation ``mean`` read its training tissue of mean colour ``data_mean``."""
    return tuple(float(m + t - d) for m, t, d in zip(mean, tissue_mean, data_mean))  # type: ignore[return-value]


@dataclass(frozen=True)
class ColourAlignment:
    """What one slide or image was aligned with (RGB in [0, 1])."""

    tissue_mean: RGB  # the slide's own mean tissue colour
    data_mean: RGB  # the model's training tissue
    normalisation_mean: RGB  # what the network's input was normalised with

    def as_dict(self) -> dict[str, list[float]]:
        return {name: [round(v, 4) for v in getattr(self, name)] for name in ("tissue_mean", "data_mean", "normalisation_mean")}


def align_colours(mean: Iterable[float], data_mean: Iterable[float] | None, images: Iterable[np.ndarray]) -> ColourAlignment | None:
    """The alignment of (H, W, 3) uint8 ``images`` (a slide's thumbnail, or an image itself) for a
    model with normalisation ``mean`` and training tissue ``data_mean``; None when the model does
    not record ``data_mean`` (files written before it did)."""
    if data_mean is None:
        return None
    tissue = tissue_rgb_mean(images)
    data = tuple(float(v) for v in data_mean)
    return ColourAlignment(tissue, data, aligned_mean(mean, data, tissue))  # type: ignore[arg-type]
