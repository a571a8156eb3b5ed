"""Contour refinement (METHOD_NOTES.md §1): contour points move along a predicted displacement field.

Frame: input pixels (x right, y down, pixel centre at index + 0.5).
"""

from __future__ import annotations

from itertools import accumulate

import torch
from torch.nn import functional as F


def _bucket_weights(samples: int, buckets: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each contour point: its two neighbouring buckets and the weight of the second."""
    position = torch.arange(samples, device=device, dtype=torch.float32) * buckets / samples
    first = torch.floor(position).long() % buckets
    return first, (first + 1) % buckets, position - torch.floor(position)


def refine_contours(
    contours: torch.Tensor,
    image_index: torch.Tensor,
    refinement: torch.Tensor,
    iterations: int,
    input_size: tuple[int, int],
) -> list[torch.Tensor]:
    """Move contour points by the refinement field, ``iterations`` times.

    contours: (N, S, 2) in input px; image_index: (N,) batch index of each contour;
    refinement: (B, 2 * buckets, h, w) offsets in px on a grid covering the whole input of
    ``input_size`` = (height, width) px (any stride). Each point reads the field at its current
    position (bilinear), interpolated between the two buckets nearest to its index along the
    contour. Returns the contour after each iteration. The contours are grouped by image once
    (one host synchronisation per call, not one per image and iteration).
    """
    batch, channels = refinement.shape[:2]
    buckets = channels // 2
    samples = contours.shape[1]
    first, second, weight = _bucket_weights(samples, buckets, contours.device)
    points_index = torch.arange(samples, device=contours.device)
    input_height, input_width = input_size
    order = torch.argsort(image_index, stable=True)
    restore = torch.empty_like(order)
    restore[order] = torch.arange(len(order), device=order.device)
    counts = torch.bincount(image_index, minlength=batch).tolist()
    starts = [0, *accumulate(counts)]
    spans = [(b, starts[b], starts[b + 1]) for b in range(batch) if counts[b]]
    # grid_sample's backward corrupts memory on channels-last slices: sample dense copies.
    fields = {b: refinement[b : b + 1].contiguous() for b, _, _ in spans}
    outputs = []
    current = contours[order]
    for _ in range(iterations):
        pieces = []
        for b, start, end in spans:
            points = current[start:end]  # (n, S, 2)
            # With align_corners=False, -1 and 1 are the outer edges of the input image.
            grid = torch.stack([points[..., 0] / input_width, points[..., 1] / input_height], dim=-1)
            sampled = F.grid_sample(
                fields[b], (grid * 2.0 - 1.0)[None].to(refinement.dtype), mode="bilinear",
                padding_mode="border", align_corners=False,
            )[0]  # (2 * buckets, n, S)
            field = sampled.view(buckets, 2, *sampled.shape[1:])  # (buckets, 2, n, S)
            v_first = field[first, :, :, points_index]  # (S, 2, n)
            v_second = field[second, :, :, points_index]
            w = weight[:, None, None]
            vectors = ((1.0 - w) * v_first + w * v_second).permute(2, 0, 1)  # (n, S, 2)
            pieces.append(points + vectors.to(points.dtype))
        current = torch.cat(pieces) if pieces else current
        outputs.append(current[restore])
    return outputs
