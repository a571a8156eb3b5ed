"""The training-free Fourier guide: a high-pass of the image that lights up nuclei (METHOD_NOTES.md §2)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# ITU-R BT.601 luma weights.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


def fourier_guide(rgb: np.ndarray, radius: int = 1) -> np.ndarray:
    """Normalised guide g in [0, 1] (float32, same height and width as ``rgb``) of the image's
    luminance: :func:`high_pass_guide` of its BT.601 grey levels. A constant image gives all zeros.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB array, got shape {rgb.shape}")
    return high_pass_guide(rgb.astype(np.float64) @ _LUMA, radius)


def high_pass_guide(plane: np.ndarray, radius: int = 1) -> np.ndarray:
    """Centred FFT of a (H, W) plane → zero every coefficient within ``radius`` of the centre
    (removing DC and the lowest frequencies) → inverse FFT → magnitude → min-max normalisation
    (float32 in [0, 1]; a constant plane gives all zeros)."""
    spectrum = np.fft.fftshift(np.fft.fft2(np.asarray(plane, dtype=np.float64)))
    height, width = plane.shape
    yy, xx = np.ogrid[:height, :width]
    centre_y, centre_x = height // 2, width // 2  # where fftshift puts the zero frequency
    spectrum[(yy - centre_y) ** 2 + (xx - centre_x) ** 2 <= radius**2] = 0
    magnitude = np.abs(np.fft.ifft2(np.fft.ifftshift(spectrum)))
    low, high = magnitude.min(), magnitude.max()
    if high - low <= 1e-12:
        return np.zeros(plane.shape, dtype=np.float32)
    return ((magnitude - low) / (high - low)).astype(np.float32)


def guide_target(normalised_guide: np.ndarray, nuclei_mask: np.ndarray | None, hard: bool, threshold: float = 0.5) -> np.ndarray:
    """Training target of the guide head (float32 in [0, 1]).

    soft: clip(g + M, 0, 1), M the mask of annotated nuclei (none given: g alone);
    hard: that, binarised at ``threshold``.
    """
    target = normalised_guide.astype(np.float32)
    if nuclei_mask is not None:
        target = np.clip(target + nuclei_mask.astype(np.float32), 0.0, 1.0)
    if hard:
        target = (target >= threshold).astype(np.float32)
    return target


def guide_instances(
    rgb: np.ndarray, radius: int = 1, smoothing: float = 1.0, threshold: float = 0.4, opening: int = 2, min_area: int = 20
) -> np.ndarray:
    """Training-free nucleus instances from the guide alone (the baseline FrGNet improves on).

    Gaussian-smoothed guide (σ = ``smoothing`` px) > ``threshold`` → holes filled → binary
    opening (``opening`` iterations, splits touching blobs) → 4-connected components of at
    least ``min_area`` px. Returns an int32 label map.
    """
    smoothed = ndimage.gaussian_filter(fourier_guide(rgb, radius), smoothing)
    mask = ndimage.binary_fill_holes(smoothed > threshold)
    if opening:
        mask = ndimage.binary_opening(mask, iterations=opening)
    labels, _ = ndimage.label(mask)
    areas = np.bincount(labels.ravel())
    labels[areas[labels] < min_area] = 0
    relabelled, _ = ndimage.label(labels > 0)
    return relabelled.astype(np.int32)
