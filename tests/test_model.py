"""The network: output shapes, gradients to every head, ablation switches."""

import pytest
import torch

from wsi_frgnet.config import LossConfig, ModelConfig, TargetConfig
from wsi_frgnet.model import FrgNet
from wsi_frgnet.model.losses import frgnet_loss
from wsi_frgnet.synthetic import synthetic_nuclei
from wsi_frgnet.train.crops import collate
from wsi_frgnet.train.targets import build_targets


def test_forward_shapes_of_tiny_config():
    config = ModelConfig.tiny()
    model = FrgNet(config).eval()
    with torch.no_grad():
        output = model(torch.randn(2, 3, 64, 96))
    order, buckets = config.fourier_order, config.refinement_buckets
    assert output.score_logits.shape == (2, 1, 16, 24)
    assert output.location.shape == (2, 2, 16, 24)
    assert output.fourier.shape == (2, order, 4, 16, 24)
    assert output.refinement.shape == (2, 2 * buckets, 32, 48)
    assert output.guide_logits.shape == (2, 1, 32, 48)
    assert output.head_features.shape == (2, config.decoder_widths[1], 16, 24)
    assert output.refinement.abs().max() <= config.refinement_margin


def test_input_size_must_fit_the_strides():
    model = FrgNet(ModelConfig.tiny())
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.randn(1, 3, 40, 64))


def test_ablation_switches_remove_modules():
    plain = FrgNet(ModelConfig.tiny(guide="none", contrastive=False))
    assert plain.guide_head is None and plain.projector is None
    with torch.no_grad():
        assert plain.eval()(torch.randn(1, 3, 64, 64)).guide_logits is None
    with pytest.raises(ValueError):
        ModelConfig.tiny(guide="sometimes")


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    config = ModelConfig.tiny()
    samples = []
    for seed in (0, 1):
        rgb, labels = synthetic_nuclei(96, 96, seed=seed)
        samples.append((rgb, build_targets(rgb, labels, config, TargetConfig())))
    images, targets = collate(samples)
    model = FrgNet(config).train()
    inputs = torch.from_numpy(images).permute(0, 3, 1, 2).float().contiguous() / 255.0
    output = model(inputs)
    parts = frgnet_loss(model, output, targets, LossConfig(), (96, 96), torch.Generator().manual_seed(0))
    assert {"score", "fourier", "location", "contour", "refinement", "guide", "contrastive"} <= set(parts)
    assert all(torch.isfinite(value) for value in parts.values())
    parts["total"].backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
