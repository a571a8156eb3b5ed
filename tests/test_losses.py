"""Tests for wsi_frgnet.model.losses (METHOD_NOTES.md §3): score BCE, GILC InfoNCE and the full loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from wsi_frgnet.config import (
    DEFAULT_MEAN,
    DEFAULT_STD,
    LossConfig,
    ModelConfig,
    TargetConfig,
)
from wsi_frgnet.model.frgnet import FrgNet
from wsi_frgnet.model.losses import frgnet_loss, guide_contrastive_loss, score_loss
from wsi_frgnet.train.crops import collate
from wsi_frgnet.train.targets import build_targets

# ------------------------------------------------------------------------ helpers


class _ProjectIdentity:
    """Stands in for FrgNet in ``guide_contrastive_loss``: project = L2 normalisation only,
    recording what it was given."""

    def __init__(self):
        self.calls: list[torch.Tensor] = []

    def project(self, features: torch.Tensor) -> torch.Tensor:
        self.calls.append(features.detach().clone())
        return F.normalize(features, dim=1)


def _bce(logit: float, target: float) -> float:
    return max(logit, 0.0) - logit * target + math.log1p(math.exp(-abs(logit)))


def _mixed_guide(batch=2, h=8, w=8):
    """Guide with a nucleus block (rows 2-4, cols 2-5), background elsewhere, a grey band."""
    guide = torch.zeros(batch, h, w)
    guide[:, 2:5, 2:6] = 0.9
    guide[:, 6, :] = 0.5  # neither nucleus nor background
    return guide


# ------------------------------------------------------------------ contrastive loss


@pytest.mark.parametrize(
    "fill",
    [
        pytest.param(lambda g: g.zero_(), id="no_nucleus"),
        pytest.param(lambda g: g.fill_(1.0), id="no_background"),
        pytest.param(lambda g: g.fill_(0.5), id="all_uncertain"),
        pytest.param(lambda g: (g.zero_(), g[:, 3, 3].fill_(1.0)), id="single_nucleus_position"),
    ],
)
def test_contrastive_loss_is_zero_without_nucleus_or_background(fill):
    torch.manual_seed(0)
    model = FrgNet(ModelConfig.tiny())
    features = torch.randn(2, 16, 8, 8, requires_grad=True)
    guide = torch.zeros(2, 8, 8)
    fill(guide)
    loss = guide_contrastive_loss(model, features, guide, None, LossConfig())
    assert loss.ndim == 0
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    assert features.grad is not None and torch.all(features.grad == 0)


def test_contrastive_loss_positive_on_mixed_guide_and_backpropagates():
    torch.manual_seed(0)
    model = FrgNet(ModelConfig.tiny())
    features = torch.randn(2, 16, 8, 8, requires_grad=True)
    generator = torch.Generator().manual_seed(1)
    loss = guide_contrastive_loss(model, features, _mixed_guide(), None, LossConfig(), generator)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0
    projector_grads = [p.grad for p in model.projector.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in projector_grads)


def test_contrastive_loss_one_image_without_nucleus_is_skipped():
    # Image 0 has nucleus and background, image 1 only background: the loss is that of image 0
    # alone (not halved). Nucleus features all along e0, background along e1: every sampled
    # anchor has the same loss log(1 + n_neg * exp(-1 / τ)), whatever is sampled.
    config = LossConfig()
    guide = _mixed_guide()
    guide[1] = 0.0
    features = torch.zeros(2, 4, 8, 8)
    features[:, 0] = (guide >= config.guide_high).float()
    features[:, 1] = (guide < config.guide_high).float()
    negatives = int((guide[0] <= config.guide_low).sum())
    expected = math.log(1 + negatives * math.exp(-1.0 / config.temperature))
    both = guide_contrastive_loss(_ProjectIdentity(), features, guide, None, config, torch.Generator().manual_seed(3))
    assert both.item() == pytest.approx(expected, rel=1e-4)
    assert both.item() > 0


def test_contrastive_loss_is_low_for_separated_features():
    guide = _mixed_guide()
    nucleus = guide >= 0.7
    noise = torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    separated = 0.05 * noise
    separated[:, 0] += torch.where(nucleus, 1.0, -1.0)  # nuclei along +e0, background along -e0
    config = LossConfig()
    low = guide_contrastive_loss(_ProjectIdentity(), separated, guide, None, config, torch.Generator().manual_seed(2))
    high = guide_contrastive_loss(_ProjectIdentity(), noise, guide, None, config, torch.Generator().manual_seed(2))
    assert float(low) < 0.05
    assert float(high) > 1.0
    # Similar nuclei and dissimilar background lower the loss, whatever the scale.
    flipped = -separated  # nuclei and background swap directions: still separated
    assert float(guide_contrastive_loss(_ProjectIdentity(), flipped, guide, None, config, torch.Generator().manual_seed(2))) < 0.05
    # Background identical to nuclei: the positive is no better than the negatives.
    same = torch.zeros(2, 8, 8, 8)
    same[:, 0] = 1.0
    value = guide_contrastive_loss(_ProjectIdentity(), same, guide, None, config, torch.Generator().manual_seed(2))
    negatives = int((guide[0] <= config.guide_low).sum())
    assert float(value) == pytest.approx(math.log(1 + negatives), rel=1e-4)


def test_contrastive_loss_samples_anchors_positives_negatives_by_guide_and_owner():
    batch, h, w = 4, 8, 8
    guide = torch.zeros(batch, h, w)
    owner = torch.full((batch, h, w), -1, dtype=torch.long)
    guide[:, 1:3, 1:5] = 1.0  # 8 positions of instance 2b
    guide[:, 5:7, 3:7] = 0.8  # 8 positions of instance 2b + 1
    guide[:, 4, :] = 0.5  # uncertain band
    for b in range(batch):
        owner[b, 1:3, 1:5] = 2 * b
        owner[b, 5:7, 3:7] = 2 * b + 1
    # Channel 0 encodes the image and the flat position, so that the sampled features tell
    # which positions were picked.
    code = torch.arange(batch * h * w, dtype=torch.float32).view(batch, h, w)
    features = torch.stack([code + 1.0, torch.ones(batch, h, w)], dim=1)
    config = LossConfig(anchors_per_image=16, negatives_per_image=8)

    def picks(with_owner):
        fake = _ProjectIdentity()
        loss = guide_contrastive_loss(fake, features, guide, owner if with_owner else None, config, torch.Generator().manual_seed(7))
        assert torch.isfinite(loss)
        (given,) = fake.calls
        flat = given[:, 0].long() - 1
        anchors = flat[: batch * 16]
        positives = flat[batch * 16 : 2 * batch * 16]
        negatives = flat[2 * batch * 16 :]
        assert len(negatives) == batch * 8
        return anchors, positives, negatives

    anchors, positives, negatives = picks(with_owner=True)
    flat_guide, flat_owner = guide.reshape(-1), owner.reshape(-1)
    image_of = lambda index: index // (h * w)  # noqa: E731
    # Anchors and positives are nucleus positions, negatives background, all from the same image.
    assert (flat_guide[anchors] >= config.guide_high).all()
    assert (flat_guide[positives] >= config.guide_high).all()
    assert (flat_guide[negatives] <= config.guide_low).all()
    assert torch.equal(image_of(anchors), image_of(positives))
    assert torch.equal(image_of(negatives), torch.arange(batch).repeat_interleave(8))
    assert len(set(negatives.tolist())) == len(negatives)  # without replacement
    assert (anchors != positives).all()
    different = (flat_owner[anchors] != flat_owner[positives]).float().mean()
    # Four candidates per anchor, half of each image's nucleus positions are of the other
    # instance: a different instance is available for ~94 % of anchors.
    assert different > 0.85

    anchors, positives, _ = picks(with_owner=False)
    assert (anchors != positives).all()
    assert (flat_owner[anchors] != flat_owner[positives]).float().mean() < 0.75


# ------------------------------------------------------------------------- score loss


def test_score_loss_ignores_weight_zero_cells_and_averages_fg_bg_separately():
    logits = torch.tensor([[[2.0, -1.0, 0.5], [-3.0, 1.5, 0.0]]])
    target = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]])
    weight = torch.tensor([[[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]])
    loss = score_loss(logits, target, weight)
    foreground = (_bce(2.0, 1.0) + _bce(1.5, 1.0)) / 2
    background = (_bce(-1.0, 0.0) + _bce(-3.0, 0.0)) / 2
    assert float(loss) == pytest.approx(foreground + background, rel=1e-5)

    changed = logits.clone()
    changed[0, 0, 2] = 40.0
    changed[0, 1, 2] = -40.0
    torch.testing.assert_close(score_loss(changed, target, weight), loss)

    # Many more background cells do not outweigh the foreground: separate means.
    wide_logits = torch.cat([logits, torch.full((1, 2, 30), -1.0)], dim=2)
    wide_target = torch.cat([target, torch.zeros(1, 2, 30)], dim=2)
    wide_weight = torch.cat([weight, torch.ones(1, 2, 30)], dim=2)
    wide_background = (_bce(-1.0, 0.0) * 61 + _bce(-3.0, 0.0)) / 62
    assert float(score_loss(wide_logits, wide_target, wide_weight)) == pytest.approx(foreground + wide_background, rel=1e-5)


def test_score_loss_without_foreground_or_without_taught_cells():
    logits = torch.tensor([[[0.3, -2.0]]])
    assert float(score_loss(logits, torch.zeros(1, 1, 2), torch.ones(1, 1, 2))) == pytest.approx(
        (_bce(0.3, 0) + _bce(-2.0, 0)) / 2, rel=1e-5
    )
    nothing = score_loss(logits.requires_grad_(), torch.ones(1, 1, 2), torch.zeros(1, 1, 2))
    assert nothing.item() == 0.0 and torch.isfinite(nothing)


# ----------------------------------------------------------------------- full loss


def _crop(seed, size=64, nuclei=3):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] + 0.5
    labels = np.zeros((size, size), np.int32)
    for i in range(nuclei):
        cx, cy = rng.uniform(12, size - 12, 2)
        a, b = rng.uniform(6, 10), rng.uniform(5, 7)
        labels[((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1] = i + 1
    rgb = np.empty((size, size, 3), np.float64)
    rgb[:] = (235, 200, 225)
    rgb[labels > 0] = (80, 40, 140)
    rgb = np.clip(rgb + rng.normal(0, 4, rgb.shape), 0, 255).astype(np.uint8)
    return rgb, labels


def _batch(config, crops):
    samples = [(rgb, build_targets(rgb, labels, config, TargetConfig())) for rgb, labels in crops]
    images, targets = collate(samples)
    x = torch.from_numpy(images).float().permute(0, 3, 1, 2) / 255.0
    mean = torch.tensor(DEFAULT_MEAN)[None, :, None, None]
    std = torch.tensor(DEFAULT_STD)[None, :, None, None]
    return (x - mean) / std, targets


@pytest.mark.parametrize(
    "config, expected_keys",
    [
        (ModelConfig.tiny(), {"guide", "contrastive"}),
        (ModelConfig.tiny(guide="hard"), {"guide", "contrastive"}),
        (ModelConfig.tiny(guide="none"), {"contrastive"}),
        (ModelConfig.tiny(guide="none", contrastive=False), set()),
        (ModelConfig.tiny(contrastive=False), {"guide"}),
    ],
    ids=["soft", "hard", "no_guide", "plain_cpn", "no_contrastive"],
)
def test_frgnet_loss_parts_are_finite(config, expected_keys):
    torch.manual_seed(0)
    model = FrgNet(config).train()
    x, targets = _batch(config, [_crop(0), _crop(1)])
    assert targets.centres.shape[0] >= 4
    output = model(x)
    loss_config = LossConfig()
    parts = frgnet_loss(model, output, targets, loss_config, (64, 64), torch.Generator().manual_seed(0))
    base = {"score", "fourier", "location", "contour", "refinement", "total"}
    assert set(parts) == base | expected_keys
    for name, value in parts.items():
        assert value.ndim == 0 and torch.isfinite(value), name
    for name in ("score", "fourier", "location", "contour", "refinement"):
        assert parts[name].item() > 0, name
    parts["total"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.score_head[-1].weight.grad.abs().sum() > 0
    assert model.fourier_head[-1].weight.grad.abs().sum() > 0
    assert model.refinement_head[-1].weight.grad.abs().sum() > 0
    if "guide" in expected_keys:
        assert model.guide_head[-1].weight.grad.abs().sum() > 0


def test_frgnet_loss_with_no_instances():
    config = ModelConfig.tiny()
    torch.manual_seed(0)
    model = FrgNet(config).train()
    blank = np.full((64, 64, 3), 235, np.uint8)
    x, targets = _batch(config, [(blank, np.zeros((64, 64), np.int32))] * 2)
    assert targets.centres.shape[0] == 0
    parts = frgnet_loss(model, model(x), targets, LossConfig(), (64, 64))
    for name in ("fourier", "location", "contour", "refinement", "contrastive"):
        assert parts[name].item() == 0.0, name
    assert torch.isfinite(parts["total"]) and parts["score"].item() > 0
    parts["total"].backward()


def test_frgnet_loss_weights_scale_the_total():
    config = ModelConfig.tiny()
    torch.manual_seed(0)
    model = FrgNet(config).train()
    x, targets = _batch(config, [_crop(2)])
    output = model(x)
    zero_weights = LossConfig(instance=0.0, guide=0.0, contrastive=0.0)
    parts = frgnet_loss(model, output, targets, zero_weights, (64, 64), torch.Generator().manual_seed(0))
    assert parts["total"].item() == 0.0
    assert parts["guide"].item() > 0
    only_guide = LossConfig(instance=0.0, contrastive=0.0, guide=2.0)
    parts = frgnet_loss(model, output, targets, only_guide, (64, 64), torch.Generator().manual_seed(0))
    torch.testing.assert_close(parts["total"], 2.0 * parts["guide"])
    expected_guide = F.binary_cross_entropy_with_logits(output.guide_logits[:, 0], targets.guide)
    torch.testing.assert_close(parts["guide"], expected_guide)


def test_frgnet_loss_total_matches_hand_computed_values():
    """One 16 x 16 px image, one nucleus proposed at head cell (row 1, column 1), every output
    chosen so that each term can be worked out on paper (see the comments)."""
    from types import SimpleNamespace

    from wsi_frgnet.model.frgnet import NetworkOutput
    from wsi_frgnet.model.losses import PIXEL_LOSS_SCALE, BatchTargets

    config = ModelConfig.tiny(fourier_order=1, contour_points=4, refinement_buckets=1, refinement_iterations=1, contrastive=False)
    model = SimpleNamespace(config=config)  # the loss reads only the config when GILC is off
    output = NetworkOutput(
        score_logits=torch.zeros(1, 1, 4, 4),  # sigmoid 0.5 everywhere
        location=torch.zeros(1, 2, 4, 4),  # predicted centre = cell centre (6, 6)
        fourier=torch.tensor([2.0, 0.0, 0.0, 2.0]).view(1, 1, 4, 1, 1).expand(1, 1, 4, 4, 4).clone(),  # circle r = 2
        refinement=torch.zeros(1, 2, 8, 8),  # refinement moves nothing
        guide_logits=torch.zeros(1, 1, 8, 8),
        head_features=torch.zeros(1, 16, 4, 4),
    )
    score = torch.zeros(1, 4, 4)
    score[0, 1, 1] = 1.0
    owner = torch.full((1, 4, 4), -1, dtype=torch.long)
    owner[0, 1, 1] = 0
    targets = BatchTargets(
        score=score,
        score_weight=torch.ones(1, 4, 4),
        owner=owner,
        centres=torch.tensor([[7.0, 6.0]]),  # one px right of the cell centre
        coefficients=torch.tensor([[[3.0, 0.0, 0.0, 2.0]]]),  # a = 3 instead of 2
        contours=torch.tensor([[[10.0, 6.0], [7.0, 9.0], [4.0, 6.0], [7.0, 3.0]]]),  # circle r = 3 at (7, 6)
        guide=torch.full((1, 8, 8), 0.5),
    )
    weights = LossConfig(instance=1.0, fourier=2.0, location=0.5, contour=3.0, refinement=1.0, guide=0.5, contrastive=7.0)
    parts = frgnet_loss(model, output, targets, weights, (16, 16))
    assert PIXEL_LOSS_SCALE == 4.0
    ln2 = math.log(2.0)
    # score: BCE of logit 0 is ln 2 for every cell; mean over the foreground + mean over background
    assert parts["score"].item() == pytest.approx(2 * ln2)
    # Fourier: |2 - 3| over 4 coefficients = 0.25, order weight 1, / 4 px
    assert parts["fourier"].item() == pytest.approx(0.0625)
    # location: |(0, 0) - (1, 0)| averaged over x and y = 0.5, / 4 px
    assert parts["location"].item() == pytest.approx(0.125)
    # contour: decoded (8, 6), (6, 8), (4, 6), (6, 4) against the target points:
    # |8-10| + 0 + |6-7| + |8-9| + 0 + 0 + |6-7| + |4-3| = 6 over 8 values = 0.75, / 4 px
    assert parts["contour"].item() == pytest.approx(0.1875)
    assert parts["refinement"].item() == pytest.approx(0.1875)  # no displacement: as the contour
    # guide: BCE(logit 0, target 0.5) = ln 2
    assert parts["guide"].item() == pytest.approx(ln2)
    assert "contrastive" not in parts
    # 1 x (2 ln 2 + 2 x 0.0625 + 0.5 x 0.125 + 3 x 0.1875 + 0.1875) + 0.5 x ln 2
    assert parts["total"].item() == pytest.approx(2.5 * ln2 + 0.125 + 0.0625 + 0.5625 + 0.1875)
