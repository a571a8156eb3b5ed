"""H&E augmentation: dihedral transforms of image + labels, stain / colour jitter of the image,
what scanners do to it (resolution loss, blur, JPEG, brightness and contrast), and synthetic
dark fibres over the background. The stain and scanner transforms also make the shift
benchmarks (benchmarks/domain_shift.py)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy import ndimage

# Ruifrok & Johnston haematoxylin, eosin, DAB optical-density vectors (rows), normalised.
_STAIN_VECTORS = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_STAIN_VECTORS = _STAIN_VECTORS / np.linalg.norm(_STAIN_VECTORS, axis=1, keepdims=True)
_TO_STAINS = np.linalg.inv(_STAIN_VECTORS)


def dihedral(
    rgb: np.ndarray, labels: np.ndarray, rng: np.random.Generator, *masks: np.ndarray | None
) -> tuple[np.ndarray, ...]:
    """Random flip and 90° rotation applied identically to image (H, W, 3), labels (H, W) and
    any extra ``masks`` (H, W) (None passes through as None).

    Returns ``(rgb, labels)``, followed by the transformed masks when some are given. The
    random draws do not depend on the masks, so the same ``rng`` state gives the same
    transform with or without them.
    """
    turns = int(rng.integers(4))
    flip = rng.random() < 0.5

    def transform(array: np.ndarray | None) -> np.ndarray | None:
        if array is None:
            return None
        array = np.rot90(array, turns)
        return np.ascontiguousarray(array[:, ::-1] if flip else array)

    return tuple(transform(array) for array in (rgb, labels, *masks))


def _optical_density(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB → float32 optical density per channel (natural log, +1 so 0 stays finite)."""
    return -np.log((rgb.astype(np.float32) + 1.0) / 256.0)


def _rgb_of_density(density: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_optical_density`: float RGB, not rounded or clipped."""
    return 256.0 * np.exp(-density) - 1.0


def adjust_stains(rgb: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Change the amounts of haematoxylin, eosin and the residual stain in optical-density
    space: each concentration c becomes c * scale + shift (arrays of 3). Returns float32 RGB."""
    stains = _optical_density(rgb) @ _TO_STAINS.astype(np.float32)
    density = (stains * np.asarray(scale, np.float32) + np.asarray(shift, np.float32)) @ _STAIN_VECTORS.astype(np.float32)
    return _rgb_of_density(density)


def stain_jitter(rgb: np.ndarray, rng: np.random.Generator, strength: float = 0.05, brightness: float = 0.08) -> np.ndarray:
    """Perturb haematoxylin / eosin amounts in optical-density space, then brightness.

    Each stain concentration c becomes c * U(1 - 5·strength, 1 + 5·strength) + U(-strength, strength)
    (a scale of ±25 % at the default), mimicking another lab's staining.
    """
    scale = rng.uniform(1 - 5 * strength, 1 + 5 * strength, size=3)
    shift = rng.uniform(-strength, strength, size=3)
    out = adjust_stains(rgb, scale, shift) * rng.uniform(1 - brightness, 1 + brightness)
    return np.clip(out, 0, 255).astype(np.uint8)


def jpeg_round_trip(rgb: np.ndarray, quality: int) -> np.ndarray:
    """``rgb`` saved as JPEG at ``quality`` (1-95) and decoded again: its compression artefacts."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def resolution_round_trip(rgb: np.ndarray, factor: float) -> np.ndarray:
    """``rgb`` resampled to ``factor`` times its size and back (bilinear): the detail a scanner at
    that resolution loses, e.g. 0.5 for a 20x scan of tissue the model sees at 40x."""
    height, width = rgb.shape[:2]
    small = Image.fromarray(np.ascontiguousarray(rgb)).resize((max(1, round(width * factor)), max(1, round(height * factor))),
                                                             Image.Resampling.BILINEAR)
    return np.asarray(small.resize((width, height), Image.Resampling.BILINEAR))


def blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of σ = ``sigma`` px in the image plane (an out-of-focus scan)."""
    return np.clip(np.round(ndimage.gaussian_filter(rgb.astype(np.float32), sigma=(sigma, sigma, 0.0))), 0, 255).astype(np.uint8)


def scanner_jitter(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random scanner: with probability 1/2 each, a resolution loss (x0.5-0.9 and back), a blur
    (σ 0.3-1.2 px), JPEG (quality 50-90), and brightness / contrast (±10 % each). The image
    only: outlines stay where they are."""
    if rng.random() < 0.5:
        rgb = resolution_round_trip(rgb, rng.uniform(0.5, 0.9))
    if rng.random() < 0.5:
        rgb = blur(rgb, rng.uniform(0.3, 1.2))
    if rng.random() < 0.5:
        rgb = jpeg_round_trip(rgb, int(rng.integers(50, 91)))
    if rng.random() < 0.5:
        mean = rgb.mean()
        out = (rgb.astype(np.float32) - mean) * rng.uniform(0.9, 1.1) + mean * rng.uniform(0.9, 1.1)
        rgb = np.clip(np.round(out), 0, 255).astype(np.uint8)
    return rgb


def fibre_artefacts(rgb: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``rgb`` (H, W, 3) uint8 with 1-4 thin dark fibres drawn over it, away from the nuclei of
    ``labels`` (H, W): the keratin flakes and collagen edges a model must not outline. Labels
    stay as they are, so the fibres are taught as background.

    Each fibre is a quadratic Bézier curve 80-400 px long and 1.5-12 px wide (at 0.25 µm/px:
    20-100 µm by 0.4-3 µm, longer than any nucleus), added in optical-density space as haematoxylin (1-3) plus eosin
    (0.2-1), so it is as dark as the densest chromatin. Nucleus pixels and a 2 px ring around
    them keep their values.
    """
    height, width = labels.shape
    added = np.zeros((height, width, 3), np.float32)  # optical density the fibres add
    for _ in range(int(rng.integers(1, 5))):
        start = rng.uniform((0, 0), (width, height))
        length = rng.uniform(80, 400)
        angle = rng.uniform(0, 2 * np.pi)
        direction = np.array([np.cos(angle), np.sin(angle)])
        end = start + length * direction
        bend = (start + end) / 2 + rng.uniform(-0.4, 0.4) * length * np.array([-direction[1], direction[0]])
        t = np.linspace(0.0, 1.0, max(2, int(2 * length)))[:, None]
        points = np.round((1 - t) ** 2 * start + 2 * t * (1 - t) * bend + t**2 * end).astype(np.intp)
        points = points[(points[:, 0] >= 0) & (points[:, 0] < width) & (points[:, 1] >= 0) & (points[:, 1] < height)]
        if not len(points):
            continue
        off_curve = np.ones((height, width), bool)
        off_curve[points[:, 1], points[:, 0]] = False
        distance = ndimage.distance_transform_edt(off_curve)
        coverage = np.clip(rng.uniform(0.75, 6.0) + 0.5 - distance, 0.0, 1.0).astype(np.float32)
        density = rng.uniform(1.0, 3.0) * _STAIN_VECTORS[0] + rng.uniform(0.2, 1.0) * _STAIN_VECTORS[1]
        added = np.maximum(added, coverage[..., None] * density.astype(np.float32))
    added[ndimage.binary_dilation(labels > 0, iterations=2)] = 0.0
    return np.clip(np.round(_rgb_of_density(_optical_density(rgb) + added)), 0, 255).astype(np.uint8)
