"""Elliptic Fourier contours (Kuhl & Giardina 1982): descriptors of a polygon, and the one
decoder from coefficients back to contour points, shared by training targets, losses and
inference.

A contour of order K is x(t) = x0 + sum_k a_k cos 2πkt + b_k sin 2πkt and
y(t) = y0 + sum_k c_k cos 2πkt + d_k sin 2πkt, k = 1..K, t in [0, 1); coefficients are
stored as (K, 4) = (a, b, c, d), px.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def elliptic_fourier_descriptors(polygon: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Elliptic Fourier descriptors (Kuhl & Giardina 1982) of a closed polygon.

    ``polygon`` is (N, 2) (x, y), not repeated at the end; the closing segment is included.
    The parameter t in [0, 1) runs proportionally to arc length from the first vertex.
    Returns (centre (2,) = (x0, y0), coefficients (order, 4) = (a_k, b_k, c_k, d_k)) in pixels,
    such that x(t) = x0 + sum_k a_k cos 2πkt + b_k sin 2πkt, y(t) = y0 + sum_k c_k cos 2πkt + d_k sin 2πkt.
    """
    closed = np.vstack([polygon, polygon[:1]]).astype(np.float64)
    steps = np.diff(closed, axis=0)
    lengths = np.hypot(steps[:, 0], steps[:, 1])
    keep = lengths > 0
    steps, lengths = steps[keep], lengths[keep]
    perimeter = lengths.sum()
    if perimeter <= 0:
        raise ValueError("polygon has no length")
    t = np.concatenate([[0.0], np.cumsum(lengths)]) / perimeter  # (M+1,) in [0, 1]
    k = np.arange(1, order + 1)[:, None]  # (K, 1)
    phase = 2.0 * np.pi * k * t[None, :]  # (K, M+1)
    cos_diff = np.diff(np.cos(phase), axis=1)  # (K, M)
    sin_diff = np.diff(np.sin(phase), axis=1)
    slope = steps * perimeter / lengths[:, None]  # d(x, y)/dt per segment, t in [0, 1]
    factor = 1.0 / (2.0 * np.pi**2 * k[:, 0] ** 2)  # (K,)
    a = factor * (cos_diff @ slope[:, 0])
    b = factor * (sin_diff @ slope[:, 0])
    c = factor * (cos_diff @ slope[:, 1])
    d = factor * (sin_diff @ slope[:, 1])
    # Centre: the arc-length mean of the polygon (mean of each segment's midpoint, weighted).
    midpoints = closed[:-1][keep] + steps / 2.0
    centre = (midpoints * lengths[:, None]).sum(axis=0) / perimeter
    return centre, np.stack([a, b, c, d], axis=1)


def fourier_basis(
    order: int, samples: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(samples, order, 2) tensor of cos 2πkt, sin 2πkt at t = i / samples, k = 1..order."""
    t = torch.arange(samples, device=device, dtype=dtype) / samples
    k = torch.arange(1, order + 1, device=device, dtype=dtype)
    phase = 2.0 * math.pi * t[:, None] * k[None, :]
    return torch.stack([torch.cos(phase), torch.sin(phase)], dim=-1)


def decode_contours(centres: torch.Tensor, coefficients: torch.Tensor, samples: int) -> torch.Tensor:
    """Contours (N, samples, 2) from centres (N, 2) and coefficients (N, K, 4) = (a, b, c, d),
    at t = i / samples. Differentiable; float64 inputs are decoded in float64, others with a
    float32 basis cast to their dtype."""
    basis_dtype = torch.float64 if coefficients.dtype == torch.float64 else torch.float32
    basis = fourier_basis(coefficients.shape[1], samples, coefficients.device, basis_dtype).to(coefficients.dtype)
    cos, sin = basis[..., 0], basis[..., 1]  # (S, K)
    x = cos @ coefficients[..., 0].T + sin @ coefficients[..., 1].T  # (S, N)
    y = cos @ coefficients[..., 2].T + sin @ coefficients[..., 3].T
    return torch.stack([x.T, y.T], dim=-1) + centres[:, None, :]


def resample_polygon(polygon: np.ndarray, samples: int) -> np.ndarray:
    """(samples, 2) points at equal arc-length steps t = i / samples along a closed polygon."""
    closed = np.vstack([polygon, polygon[:1]]).astype(np.float64)
    lengths = np.hypot(*np.diff(closed, axis=0).T)
    cumulative = np.concatenate([[0.0], np.cumsum(lengths)])
    targets = np.arange(samples) / samples * cumulative[-1]
    return np.stack([np.interp(targets, cumulative, closed[:, 0]), np.interp(targets, cumulative, closed[:, 1])], axis=1)
