"""FrGNet: a Contour Proposal Network with Fourier guidance (METHOD_NOTES.md §1).

Input: (B, 3, H, W) normalised RGB, H and W multiples of ``config.size_multiple``.
All outputs are in input pixels; maps are at stride 4 (CPN heads) or 2 (guide, refinement).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from wsi_frgnet.config import ModelConfig
from wsi_frgnet.model.backbone import Decoder, EfficientNetLite0Encoder, Encoder


def _head(in_channels: int, width: int, out_channels: int) -> nn.Sequential:
    """3x3 conv → BN → ReLU → 1x1 conv."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, out_channels, 1),
    )


def guide_modulate(features: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
    """GARU: F' = F + F ⊙ G, with the guide (B, 1, h, w) in [0, 1] resized to the features."""
    if guide.shape[-2:] != features.shape[-2:]:
        guide = F.interpolate(guide, size=features.shape[-2:], mode="bilinear", align_corners=False)
    return features * (1.0 + guide)


@dataclass
class NetworkOutput:
    """Raw network outputs for a batch (input-pixel units).

    score_logits: (B, 1, H/4, W/4): "a nucleus is centred in this cell", before sigmoid.
    location: (B, 2, H/4, W/4): (dx, dy) from the cell centre to the contour centre, px.
    fourier: (B, K, 4, H/4, W/4): elliptic Fourier coefficients (a, b, c, d) per order, px.
    refinement: (B, 2 * buckets, H/2, W/2): per-bucket displacement (dx, dy), px.
    guide_logits: (B, 1, H/2, W/2) or None when the guide is off.
    head_features: (B, D1, H/4, W/4) guide-modulated features read by the heads.
    """

    score_logits: torch.Tensor
    location: torch.Tensor
    fourier: torch.Tensor
    refinement: torch.Tensor
    guide_logits: torch.Tensor | None
    head_features: torch.Tensor

    @property
    def guide(self) -> torch.Tensor | None:
        return None if self.guide_logits is None else torch.sigmoid(self.guide_logits)


class FrgNet(nn.Module):
    """Encoder-decoder, CPN heads, Fourier guide head + GARU, and the GILC projector."""

    # Output scales: raw head outputs are multiplied by these so that initial values are O(1).
    LOCATION_SCALE = 4.0  # px: one head cell
    FOURIER_SCALE = 8.0  # px: a typical nucleus radius at 0.25 µm/px

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder: nn.Module = (
            EfficientNetLite0Encoder() if config.encoder == "efficientnet-lite0" else Encoder(config.encoder_widths, config.encoder_blocks, config.antialias)
        )
        self.decoder = Decoder(config.encoder_widths, config.decoder_widths)
        head_in, fine_in, width = config.decoder_widths[1], config.decoder_widths[0], config.head_width
        self.score_head = _head(head_in, width, 1)
        self.location_head = _head(head_in, width, 2)
        self.fourier_head = _head(head_in, width, 4 * config.fourier_order)
        self.refinement_head = _head(fine_in, width, 2 * config.refinement_buckets)
        self.guide_head = _head(fine_in, width, 1) if config.uses_guide else None
        self.projector = (
            nn.Sequential(
                nn.Linear(head_in, head_in, bias=False),
                nn.BatchNorm1d(head_in),
                nn.ReLU(inplace=True),
                nn.Linear(head_in, config.projection_dim),
            )
            if config.contrastive
            else None
        )
        self._init_score_bias()

    def _init_score_bias(self) -> None:
        # Start with a low nucleus prior (1 %) so early training is not flooded by proposals.
        final = self.score_head[-1]
        assert isinstance(final, nn.Conv2d)
        nn.init.constant_(final.bias, -4.6)

    def forward(self, images: torch.Tensor) -> NetworkOutput:
        multiple = self.config.size_multiple
        if images.shape[-1] % multiple or images.shape[-2] % multiple:
            raise ValueError(f"input height and width must be multiples of {multiple}, got {tuple(images.shape[-2:])}")
        fine, head_features = self.decoder(self.encoder(images))[:2]
        guide_logits = None
        if self.guide_head is not None:
            guide_logits = self.guide_head(fine)
            guide = torch.sigmoid(guide_logits)
            fine = guide_modulate(fine, guide)
            head_features = guide_modulate(head_features, guide)
        batch, _, height, width = head_features.shape
        fourier = self.fourier_head(head_features) * self.FOURIER_SCALE
        return NetworkOutput(
            score_logits=self.score_head(head_features),
            location=self.location_head(head_features) * self.LOCATION_SCALE,
            fourier=fourier.view(batch, self.config.fourier_order, 4, height, width),
            refinement=self.config.refinement_margin * torch.tanh(self.refinement_head(fine)),
            guide_logits=guide_logits,
            head_features=head_features,
        )

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """GILC embeddings: (N, D1) head features → (N, P), L2-normalised. Training only."""
        if self.projector is None:
            raise RuntimeError("this model was built without the contrastive projector")
        return F.normalize(self.projector(features), dim=1)
