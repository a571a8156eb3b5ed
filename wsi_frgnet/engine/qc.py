"""The QC picture of a segmented slide: where the tool looked, how dense the nuclei are, and a few
full-resolution crops with their outlines, in one PNG for a person to check at a glance.

Left: the slide's thumbnail with the tissue mask (or regions of interest) outlined in blue, a
heat map of nuclei per 50 µm x 50 µm and the crops' places framed in yellow. Right: three crops
at the model's resolution: the densest and the sparsest of a sample of tissue tiles, and a
corner where four tiles meet (where seams would show); nuclei outlined in green, cells in yellow.
Frames: the collector takes nuclei in
level-0 px; crops are read in working px (``planning``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from wsi_frgnet.engine.overlay import draw_outlines
from wsi_frgnet.engine.planning import SlidePlan, read_region
from wsi_frgnet.nucleus import Nucleus

CROP = 256  # working px, side of a crop
CANDIDATES = 24  # tissue tiles sampled (seeded) for the dense and sparse crops
DENSITY_MICRONS = 50.0
PANEL = 768  # px: longer side of the thumbnail panel and height of the picture
MAX_KEPT = 20000  # nuclei remembered for the crops at most
CELL_COLOUR = (255, 220, 0)


@dataclass
class _Window:
    rect: tuple[int, int, int, int]  # working px (x, y, width, height)
    corner: bool  # centred where tile cores meet
    nuclei: list[Nucleus] = field(default_factory=list)


class QcCollector:
    """Counts nuclei per density cell and keeps those of the candidate crops, as they stream."""

    def __init__(self, plan: SlidePlan, thumbnail: np.ndarray, mask: np.ndarray | None, thumbnail_downsample: float) -> None:
        self.plan = plan
        self.thumbnail, self.mask, self.downsample = thumbnail, mask, thumbnail_downsample
        microns = plan.slide.microns_per_pixel or 0.25
        self.cell = max(1.0, DENSITY_MICRONS / microns)  # level-0 px per density cell
        width, height = plan.slide.dimensions
        self.counts = np.zeros((math.ceil(height / self.cell), math.ceil(width / self.cell)), dtype=np.int32)
        self.windows = self._candidates()
        self.kept = 0

    def _candidates(self) -> list[_Window]:
        tiles = self.plan.tiles
        if not tiles:
            return []
        rng = np.random.default_rng(0)
        picks = sorted(rng.permutation(len(tiles))[:CANDIDATES].tolist())
        windows = []
        for index in picks:
            x, y, width, height = tiles[index].core
            windows.append(_Window((x + width // 2 - CROP // 2, y + height // 2 - CROP // 2, CROP, CROP), corner=False))
            windows.append(_Window((x - CROP // 2, y - CROP // 2, CROP, CROP), corner=True))  # the core's top-left corner
        return windows

    def add(self, nucleus: Nucleus) -> None:
        """Take one output nucleus (level-0 px)."""
        x, y = nucleus.polygon[:-1].mean(axis=0)
        row, column = int(y // self.cell), int(x // self.cell)
        if 0 <= row < self.counts.shape[0] and 0 <= column < self.counts.shape[1]:
            self.counts[row, column] += 1
        if self.kept >= MAX_KEPT:
            return
        wx, wy = x / self.plan.factor, y / self.plan.factor
        for window in self.windows:
            left, top, width, height = window.rect
            if left - 32 <= wx < left + width + 32 and top - 32 <= wy < top + height + 32:
                window.nuclei.append(nucleus)
                self.kept += 1

    def picture(self) -> np.ndarray:
        """The QC picture, (H, W, 3) uint8."""
        panel = self._overview()
        crops = [self._crop(window, label) for window, label in self._chosen()]
        column_width = max([crop.shape[1] for crop in crops], default=0)
        height = max(panel.shape[0], sum(crop.shape[0] for crop in crops) + 8 * max(0, len(crops) - 1))
        picture = np.full((height, panel.shape[1] + (column_width + 8 if crops else 0), 3), 255, dtype=np.uint8)
        picture[: panel.shape[0], : panel.shape[1]] = panel
        top = 0
        for crop in crops:
            picture[top : top + crop.shape[0], panel.shape[1] + 8 : panel.shape[1] + 8 + crop.shape[1]] = crop
            top += crop.shape[0] + 8
        return picture

    # -- internals ---------------------------------------------------------------------------

    def _chosen(self) -> list[tuple[_Window, str]]:
        centres = [w for w in self.windows if not w.corner]
        corners = [w for w in self.windows if w.corner]
        chosen = []
        if centres:
            dense = max(centres, key=lambda w: len(w.nuclei))
            on_tissue = [w for w in centres if w is not dense and self._on_tissue(w)]
            sparse = min(on_tissue, key=lambda w: len(w.nuclei), default=None)
            chosen.append((dense, "densest"))
            if sparse is not None:
                chosen.append((sparse, "sparsest"))
        if corners:
            chosen.append((max(corners, key=lambda w: len(w.nuclei)), "tile corner"))
        return chosen

    def _on_tissue(self, window: _Window) -> bool:
        """Whether the window's centre lies on the tissue mask (or holds nuclei, without a mask)."""
        if self.mask is None:
            return bool(window.nuclei)
        x, y, width, height = window.rect
        column = int((x + width / 2) * self.plan.factor / self.downsample)
        row = int((y + height / 2) * self.plan.factor / self.downsample)
        return 0 <= row < self.mask.shape[0] and 0 <= column < self.mask.shape[1] and bool(self.mask[row, column])

    def _overview(self) -> np.ndarray:
        thumbnail = Image.fromarray(self.thumbnail).convert("RGB")
        scale = PANEL / max(thumbnail.size)
        size = (max(1, round(thumbnail.width * scale)), max(1, round(thumbnail.height * scale)))
        picture = np.asarray(thumbnail.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
        level0_per_px = self.downsample / scale
        if self.counts.any():  # heat map: red, stronger where nuclei are denser
            density = np.asarray(Image.fromarray(self.counts.astype(np.float32)).resize(size, Image.Resampling.NEAREST))
            alpha = 0.6 * np.clip(density / max(1.0, np.percentile(self.counts[self.counts > 0], 95)), 0, 1)[..., None]
            picture = picture * (1 - alpha) + np.array([220.0, 30.0, 30.0]) * alpha
        if self.mask is not None and self.mask.any():
            mask = np.asarray(Image.fromarray(self.mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 0
            edge = mask & ~ndimage.binary_erosion(mask, iterations=1)
            picture[edge] = (30, 60, 220)
        image = Image.fromarray(picture.clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for window, label in self._chosen():
            x, y, width, height = (value * self.plan.factor / level0_per_px for value in window.rect)
            draw.rectangle([x, y, x + width, y + height], outline=(240, 200, 0), width=2)
            draw.text((x + 2, y + height + 2), label, fill=(0, 0, 0))
        return np.asarray(image)

    def _crop(self, window: _Window, label: str) -> np.ndarray:
        x, y = window.rect[:2]
        rgb = read_region(self.plan, window.rect)
        origin = np.array([x, y], dtype=np.float64)
        nuclei = [Nucleus(n.polygon / self.plan.factor - origin, n.score, n.guide) for n in window.nuclei]
        cells = [Nucleus(n.cell / self.plan.factor - origin, n.score, n.guide) for n in window.nuclei if n.cell is not None]
        picture = Image.fromarray(draw_outlines(draw_outlines(rgb, cells, CELL_COLOUR), nuclei))
        ImageDraw.Draw(picture).text((4, 4), f"{label}: {len(window.nuclei)} nuclei", fill=(0, 0, 0))
        return np.asarray(picture)
