"""Training losses of FrGNet (METHOD_NOTES.md §3): CPN instance losses, guide BCE, GILC InfoNCE."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from wsi_frgnet.config import LossConfig, ModelConfig
from wsi_frgnet.geometry.fourier import decode_contours
from wsi_frgnet.model.frgnet import FrgNet, NetworkOutput
from wsi_frgnet.model.refinement import refine_contours

# Pixel-valued L1 losses are divided by this (one head cell, px) to keep them O(1) like the BCEs.
PIXEL_LOSS_SCALE = 4.0


@dataclass
class BatchTargets:
    """A collated batch of ``CropTargets`` as tensors; ``owner`` indexes the concatenated instances."""

    score: torch.Tensor  # (B, h, w)
    score_weight: torch.Tensor  # (B, h, w)
    owner: torch.Tensor  # (B, h, w) long, -1 for none
    centres: torch.Tensor  # (N, 2)
    coefficients: torch.Tensor  # (N, K, 4)
    contours: torch.Tensor  # (N, S, 2)
    guide: torch.Tensor | None  # (B, H/2, W/2)

    def to(self, device: torch.device) -> "BatchTargets":
        return BatchTargets(**{k: None if v is None else v.to(device, non_blocking=True) for k, v in vars(self).items()})


def score_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """BCE averaged separately over taught foreground and background cells, then summed."""
    per_cell = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    total = logits.new_zeros(())
    for selected in ((target > 0.5) & (weight > 0), (target <= 0.5) & (weight > 0)):
        if bool(selected.any()):
            total = total + per_cell[selected].mean()
    return total


def _order_weights(order: int, device: torch.device) -> torch.Tensor:
    """Weight 1/k for order k, scaled to mean 1: low orders (the overall shape) count more."""
    weights = 1.0 / torch.arange(1, order + 1, device=device, dtype=torch.float32)
    return weights / weights.mean()


def instance_losses(
    output: NetworkOutput,
    targets: BatchTargets,
    model_config: ModelConfig,
    loss_config: LossConfig,
    input_size: tuple[int, int],
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """CPN losses on proposals (cells inside a nucleus core), plus the score loss."""
    logits = output.score_logits[:, 0].float()
    losses = {"score": score_loss(logits, targets.score, targets.score_weight)}
    zero = logits.new_zeros(())
    batch_index, rows, cols = torch.nonzero((targets.score > 0.5) & (targets.score_weight > 0), as_tuple=True)
    if batch_index.numel() > loss_config.max_proposals:
        keep = torch.randperm(batch_index.numel(), generator=generator)[: loss_config.max_proposals].to(batch_index.device)
        batch_index, rows, cols = batch_index[keep], rows[keep], cols[keep]
    if batch_index.numel() == 0:
        losses.update(fourier=zero, location=zero, contour=zero, refinement=zero)
        return losses
    instance = targets.owner[batch_index, rows, cols]
    stride = model_config.head_stride
    cell_centres = torch.stack([(cols.float() + 0.5) * stride, (rows.float() + 0.5) * stride], dim=1)
    location = output.location[batch_index, :, rows, cols].float()  # (n, 2)
    coefficients = output.fourier[batch_index, :, :, rows, cols].float()  # (n, K, 4)
    target_centres = targets.centres[instance]
    order_weights = _order_weights(model_config.fourier_order, logits.device)[None, :, None]
    losses["fourier"] = (order_weights * (coefficients - targets.coefficients[instance]).abs()).mean() / PIXEL_LOSS_SCALE
    losses["location"] = (location - (target_centres - cell_centres)).abs().mean() / PIXEL_LOSS_SCALE
    contours = decode_contours(cell_centres + location, coefficients, model_config.contour_points)
    target_contours = targets.contours[instance]
    losses["contour"] = (contours - target_contours).abs().mean() / PIXEL_LOSS_SCALE
    refined = refine_contours(
        contours, batch_index, output.refinement.float(), model_config.refinement_iterations, input_size
    )
    losses["refinement"] = torch.stack([(step - target_contours).abs().mean() for step in refined]).mean() / PIXEL_LOSS_SCALE
    return losses


def guide_loss(output: NetworkOutput, target: torch.Tensor) -> torch.Tensor:
    """BCE between the predicted guide (stride 2) and its target."""
    assert output.guide_logits is not None
    return F.binary_cross_entropy_with_logits(output.guide_logits[:, 0].float(), target)


def _random_order(mask: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions (B, P) with each image's masked positions first, in random order; how many
    are masked per image (B,))."""
    keys = torch.rand(mask.shape, generator=generator).to(mask.device)
    return torch.argsort(torch.where(mask, keys, 2.0), dim=1), mask.sum(dim=1)


def guide_contrastive_loss(
    model: FrgNet,
    head_features: torch.Tensor,
    guide: torch.Tensor,
    owner: torch.Tensor | None,
    loss_config: LossConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """GILC InfoNCE over head-grid positions labelled by the guide mask.

    head_features: (B, D, h, w); guide: (B, h, w) in [0, 1]; owner: (B, h, w) instance index or
    -1. Anchors are nucleus positions (guide >= high), up to ``anchors_per_image`` per image
    without replacement; each positive is another nucleus position (the first of four drawn
    that belongs to a different instance where one is known); negatives are up to
    ``negatives_per_image`` background positions (guide <= low) without replacement. Images
    with fewer than two nucleus positions or no background position add nothing; the loss is
    the mean over the others. Sampling is batched over images: one host synchronisation per
    call (to pick the features the projector sees).
    """
    batch, channels = head_features.shape[:2]
    device = head_features.device
    features = head_features.permute(0, 2, 3, 1).reshape(batch, -1, channels)
    flat_guide = guide.reshape(batch, -1)
    anchors_n, negatives_n = loss_config.anchors_per_image, loss_config.negatives_per_image
    nucleus_order, nuclei = _random_order(flat_guide >= loss_config.guide_high, generator)
    background_order, backgrounds = _random_order(flat_guide <= loss_config.guide_low, generator)
    used = (nuclei >= 2) & (backgrounds >= 1)  # (B,)
    slots = torch.arange(min(anchors_n, flat_guide.shape[1]), device=device)
    anchor = nucleus_order[:, : len(slots)]  # (B, A)
    anchor_ok = (slots[None, :] < nuclei[:, None]) & used[:, None]
    draws = torch.rand((batch, len(slots), 4), generator=generator).to(device)
    picked = torch.clamp((draws * nuclei[:, None, None]).long(), max=flat_guide.shape[1] - 1)
    candidates = torch.gather(nucleus_order, 1, picked.view(batch, -1)).view(batch, len(slots), 4)
    usable = candidates != anchor[..., None]
    if owner is not None:
        flat_owner = owner.reshape(batch, -1)
        anchor_owner = torch.gather(flat_owner, 1, anchor)[..., None]
        different = (torch.gather(flat_owner, 1, candidates.view(batch, -1)).view_as(candidates) != anchor_owner) | (anchor_owner < 0)
        usable = usable & different | (usable & ~different.any(dim=2, keepdim=True))
    first = torch.where(usable.any(dim=2), usable.float().argmax(dim=2), torch.zeros_like(anchor))
    positive = torch.gather(candidates, 2, first[..., None])[..., 0]  # (B, A)
    negative_slots = torch.arange(min(negatives_n, flat_guide.shape[1]), device=device)
    negative = background_order[:, : len(negative_slots)]  # (B, N)
    negative_ok = (negative_slots[None, :] < backgrounds[:, None]) & used[:, None]
    rows = torch.arange(batch, device=device)[:, None]
    picks = [features[rows, anchor][anchor_ok], features[rows, positive][anchor_ok], features[rows, negative][negative_ok]]
    sizes = [len(part) for part in picks]  # the one host synchronisation
    if sizes[0] == 0:
        return head_features.sum() * 0.0
    embedded = torch.split(model.project(torch.cat(picks).float()), sizes)
    dimension = embedded[0].shape[1]
    anchors = embedded[0].new_zeros((batch, len(slots), dimension)).index_put((anchor_ok,), embedded[0])
    positives = embedded[1].new_zeros((batch, len(slots), dimension)).index_put((anchor_ok,), embedded[1])
    negatives = embedded[2].new_zeros((batch, len(negative_slots), dimension)).index_put((negative_ok,), embedded[2])
    positive_logit = (anchors * positives).sum(dim=2, keepdim=True)  # (B, A, 1)
    negative_logits = (anchors @ negatives.transpose(1, 2)).masked_fill(~negative_ok[:, None, :], float("-inf"))  # (B, A, N)
    logits = torch.cat([positive_logit, negative_logits], dim=2) / loss_config.temperature
    per_anchor = F.cross_entropy(logits.flatten(0, 1), torch.zeros(logits.shape[0] * logits.shape[1], dtype=torch.long, device=device),
                                 reduction="none").view(batch, -1)
    per_anchor = torch.where(anchor_ok, per_anchor, torch.zeros_like(per_anchor))
    per_image = per_anchor.sum(dim=1) / anchor_ok.sum(dim=1).clamp(min=1)
    return (per_image * used).sum() / used.sum().clamp(min=1)


def frgnet_loss(
    model: FrgNet,
    output: NetworkOutput,
    targets: BatchTargets,
    loss_config: LossConfig,
    input_size: tuple[int, int],
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """All losses, each term and their weighted sum under "total"."""
    config = model.config
    parts = instance_losses(output, targets, config, loss_config, input_size, generator)
    instance = (
        parts["score"]
        + loss_config.fourier * parts["fourier"]
        + loss_config.location * parts["location"]
        + loss_config.contour * parts["contour"]
        + loss_config.refinement * parts["refinement"]
    )
    total = loss_config.instance * instance
    if config.uses_guide and targets.guide is not None:
        parts["guide"] = guide_loss(output, targets.guide)
        total = total + loss_config.guide * parts["guide"]
    if config.contrastive:
        if targets.guide is not None:
            head_guide = F.avg_pool2d(targets.guide[:, None], 2)[:, 0]
        else:
            head_guide = (targets.score > 0.5).float()  # no guide: nucleus cores label positions
        parts["contrastive"] = guide_contrastive_loss(model, output.head_features, head_guide, targets.owner, loss_config, generator)
        total = total + loss_config.contrastive * parts["contrastive"]
    parts["total"] = total
    return parts
