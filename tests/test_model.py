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


def test_antialiased_encoder_moves_less_under_a_one_pixel_shift():
    """Same weights, blur on or off: the deepest features of an image shifted by one pixel
    differ less from the unshifted ones (the blur has no parameters of its own)."""
    torch.manual_seed(0)
    plain = FrgNet(ModelConfig(antialias=False)).eval()
    smooth = FrgNet(ModelConfig(antialias=True)).eval()
    assert plain.state_dict().keys() == smooth.state_dict().keys()
    smooth.load_state_dict(plain.state_dict())
    rng = torch.Generator().manual_seed(1)
    image = torch.nn.functional.avg_pool2d(torch.randn(1, 3, 288, 288, generator=rng), 3, 1, 1)
    changes = []
    for network in (plain, smooth):
        with torch.no_grad():
            deep = network.encoder(image[..., :256, :256])[-1]
            shifted = network.encoder(image[..., 1:257, 1:257])[-1]
        changes.append(float((deep - shifted)[..., 1:-1, 1:-1].abs().mean() / deep.abs().mean()))
    assert changes[1] < 0.8 * changes[0]
    with pytest.raises(ValueError, match="resnet"):
        ModelConfig.efficientnet_lite0(antialias=True)
