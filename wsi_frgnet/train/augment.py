"""H&E augmentation: dihedral transforms of image + labels, and stain / colour jitter of the image."""

from __future__ import annotations

import numpy as np

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


def adjust_stains(rgb: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Change the amounts of haematoxylin, eosin and the residual stain in optical-density
    space: each concentration c becomes c * scale + shift (arrays of 3). Returns float32 RGB."""
    density = -np.log((rgb.astype(np.float32) + 1.0) / 256.0)
    stains = density @ _TO_STAINS.astype(np.float32)
    density = (stains * np.asarray(scale, np.float32) + np.asarray(shift, np.float32)) @ _STAIN_VECTORS.astype(np.float32)
    return 256.0 * np.exp(-density) - 1.0


def stain_jitter(rgb: np.ndarray, rng: np.random.Generator, strength: float = 0.05, brightness: float = 0.08) -> np.ndarray:
    """Perturb haematoxylin / eosin amounts in optical-density space, then brightness.

    Each stain concentration c becomes c * U(1 - 5·strength, 1 + 5·strength) + U(-strength, strength)
    (a scale of ±25 % at the default), mimicking another lab's staining.
    """
    scale = rng.uniform(1 - 5 * strength, 1 + 5 * strength, size=3)
    shift = rng.uniform(-strength, strength, size=3)
    out = adjust_stains(rgb, scale, shift) * rng.uniform(1 - brightness, 1 + brightness)
    return np.clip(out, 0, 255).astype(np.uint8)
