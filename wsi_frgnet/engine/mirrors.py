"""Test-time augmentation: the network's outputs averaged over an image and its mirror images.

The network sees each input four times (as it is, mirrored left-right, up-down, and both);
each pass's maps are mirrored back and averaged cell by cell, and only then decoded, so the
post-processing is unchanged. Frames: input px (x right, y down), maps at the network's strides.

What is averaged: the nucleus probability, the centre offset, the Fourier coefficients and the
guide. A mirrored pass describes a nucleus with a contour traversed the other way round from
another start point, so its coefficients are first reflected and re-parametrised (orientation
reversed, start point shifted to the one that best matches the unmirrored pass's) before they
are averaged. The refinement field is the unmirrored pass's: its buckets follow the position
along the contour, which has no fixed counterpart in a mirrored pass.
"""

from __future__ import annotations

import math

import torch

from wsi_frgnet.model import FrgNet
from wsi_frgnet.model.frgnet import NetworkOutput

MIRRORS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))  # flipped dims of (B, C, H, W): none, x, y, both
PHASE_STEPS = 128  # start points tried when aligning a mirrored contour with the unmirrored one


def _logit(probability: torch.Tensor) -> torch.Tensor:
    return torch.logit(probability.clamp(1e-6, 1.0 - 1e-6))


def _axis_signs(dims: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """(2,) = (x, y) signs of a reflection along ``dims`` (-1: x, -2: y): -1 on a mirrored axis."""
    return torch.tensor([-1.0 if -1 in dims else 1.0, -1.0 if -2 in dims else 1.0], dtype=like.dtype, device=like.device)


def _reflect_coefficients(fourier: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Coefficients (B, K, 4, h, w) = (a, b, c, d) of contours mirrored along ``dims`` (-1: x,
    -2: y), brought back to the unmirrored frame. A single reflection also reverses the
    traversal (t → -t negates the sine terms b and d), restoring the orientation the network
    predicts; two reflections are a half turn, which keeps it."""
    sign = _axis_signs(dims, fourier).repeat_interleave(2)  # x(t) → -x(t) negates a, b; y(t) → -y(t) c, d
    if len(dims) == 1:
        sign = sign * torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=sign.dtype, device=sign.device)  # t → -t
    return fourier * sign.view(1, 1, 4, 1, 1)


def _shift_start(fourier: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """Coefficients (B, K, 4, h, w) of the same contours started later by ``phase`` (B, h, w)
    radians of the first harmonic: x(t) → x(t + phase / 2π)."""
    order = torch.arange(1, fourier.shape[1] + 1, device=fourier.device, dtype=fourier.dtype)
    angle = order.view(1, -1, 1, 1) * phase[:, None]  # (B, K, h, w)
    cos, sin = torch.cos(angle), torch.sin(angle)
    a, b, c, d = fourier.unbind(dim=2)
    return torch.stack([a * cos + b * sin, b * cos - a * sin, c * cos + d * sin, d * cos - c * sin], dim=2)


def align_start(fourier: torch.Tensor, reference: torch.Tensor, steps: int = PHASE_STEPS) -> torch.Tensor:
    """``fourier`` (B, K, 4, h, w) re-parametrised, cell by cell, to the start point that
    brings its contour closest (least squares over the whole contour) to ``reference``'s.

    The squared distance between two contours is, up to constants, minus
    sum_k cos(kθ) A_k + sin(kθ) B_k for a start shifted by θ; it is evaluated on ``steps``
    phases and the best is refined by a parabola through its neighbours."""
    coefficients = fourier.float()
    a, b, c, d = coefficients.unbind(dim=2)
    ra, rb, rc, rd = reference.float().unbind(dim=2)
    along = a * ra + b * rb + c * rc + d * rd  # (B, K, h, w)
    across = b * ra - a * rb + d * rc - c * rd
    order = torch.arange(1, fourier.shape[1] + 1, device=fourier.device, dtype=torch.float32)
    theta = torch.arange(steps, device=fourier.device, dtype=torch.float32) * (2.0 * math.pi / steps)
    angle = theta[:, None] * order[None, :]  # (S, K)
    match = torch.einsum("sk,bkhw->bshw", torch.cos(angle), along) + torch.einsum("sk,bkhw->bshw", torch.sin(angle), across)
    best = match.argmax(dim=1, keepdim=True)  # (B, 1, h, w)
    left = match.gather(1, (best - 1) % steps)[:, 0]
    centre = match.gather(1, best)[:, 0]
    right = match.gather(1, (best + 1) % steps)[:, 0]
    curvature = left - 2.0 * centre + right
    offset = torch.where(curvature < 0, 0.5 * (left - right) / curvature.clamp(max=-1e-12), torch.zeros_like(centre))
    phase = (best[:, 0].float() + offset.clamp(-0.5, 0.5)) * (2.0 * math.pi / steps)
    return _shift_start(coefficients, phase).to(fourier.dtype)


def _unmirror(output: NetworkOutput, dims: tuple[int, ...], reference: torch.Tensor) -> NetworkOutput:
    """A pass over the input mirrored along ``dims``, in the unmirrored frame, its coefficients
    aligned with ``reference``'s start points. Only the averaged maps are brought back; the
    refinement field and head features stay as they are (unused)."""
    location = output.location.flip(dims) * _axis_signs(dims, output.location).view(1, 2, 1, 1)
    return NetworkOutput(
        score_logits=output.score_logits.flip(dims),
        location=location,
        fourier=align_start(_reflect_coefficients(output.fourier.flip(dims), dims), reference),
        refinement=output.refinement,
        guide_logits=None if output.guide_logits is None else output.guide_logits.flip(dims),
        head_features=output.head_features,
    )


def mirror_averaged(network: FrgNet, images: torch.Tensor) -> NetworkOutput:
    """The network's outputs for ``images`` (B, 3, H, W), averaged over the four mirror images
    (module docstring). The passes run one after the other (the memory of one pass); the
    result has the shapes of a single pass, and ``head_features`` are the unmirrored pass's."""
    first = network(images)
    probability = torch.sigmoid(first.score_logits.float())
    guide = None if first.guide_logits is None else torch.sigmoid(first.guide_logits.float())
    location, fourier = first.location.float(), first.fourier.float()
    for dims in MIRRORS[1:]:
        mirrored = _unmirror(network(images.flip(dims).contiguous(memory_format=torch.channels_last)), dims, first.fourier)
        probability = probability + torch.sigmoid(mirrored.score_logits.float())
        if guide is not None:
            guide = guide + torch.sigmoid(mirrored.guide_logits.float())
        location = location + mirrored.location.float()
        fourier = fourier + mirrored.fourier.float()
    count = float(len(MIRRORS))
    return NetworkOutput(
        score_logits=_logit(probability / count),
        location=location / count,
        fourier=fourier / count,
        refinement=first.refinement,
        guide_logits=None if guide is None else _logit(guide / count),
        head_features=first.head_features,
    )


def run_network(network: FrgNet, images: torch.Tensor, tta: bool = False) -> NetworkOutput:
    """One network pass over ``images``, or with ``tta`` the average over their mirror images."""
    return mirror_averaged(network, images) if tta else network(images)
