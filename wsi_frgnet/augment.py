"""H&E augmentation: dihedral transforms of image + labels, and stain / colour jitter of the image."""

from __future__ import annotations

import numpy as np

# Ruifrok & Johnston haematoxylin, eosin, DAB optical-density vectors (rows), normalised.
_STAIN_VECTORS = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_STAIN_VECTORS = _STAIN_VECTORS / np.linalg.norm(_STAIN_VECTORS, axis=1, keepdims=True)
_TO_STAINS = np.linalg.inv(_STAIN_VECTORS)


def dihedral(rgb: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random flip and 90° rotation applied identically to image (H, W, 3) and labels (H, W)."""
    turns = int(rng.integers(4))
    rgb, labels = np.rot90(rgb, turns), np.rot90(labels, turns)
    if rng.random() < 0.5:
        rgb, labels = rgb[:, ::-1], labels[:, ::-1]
    return np.ascontiguousarray(rgb), np.ascontiguousarray(labels)


def stain_jitter(rgb: np.ndarray, rng: np.random.Generator, strength: float = 0.05, brightness: float = 0.08) -> np.ndarray:
    """Perturb haematoxylin / eosin amounts in optical-density space, then brightness.

    Each stain concentration c becomes c * U(1 - 5·strength, 1 + 5·strength) + U(-strength, strength)
    (a scale of ±25 % at the default), mimicking another lab's staining.
    """
    density = -np.log((rgb.astype(np.float32) + 1.0) / 256.0)
    stains = density @ _TO_STAINS.astype(np.float32)
    scale = rng.uniform(1 - 5 * strength, 1 + 5 * strength, size=3).astype(np.float32)
    shift = rng.uniform(-strength, strength, size=3).astype(np.float32)
    density = (stains * scale + shift) @ _STAIN_VECTORS.astype(np.float32)
    out = 256.0 * np.exp(-density) - 1.0
    out = out * rng.uniform(1 - brightness, 1 + brightness)
    return np.clip(out, 0, 255).astype(np.uint8)
