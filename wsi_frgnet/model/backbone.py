"""ResNet-style encoder and U-Net-style decoder, built from scratch (no torchvision)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual shortcut (ResNet-18 style)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class Encoder(nn.Module):
    """Stem (stride 2) then residual stages, each halving resolution.

    Returns the feature maps of every level, level i at stride 2**(i+1).
    """

    def __init__(self, widths: tuple[int, ...], blocks: tuple[int, ...]) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn_relu(3, widths[0], stride=2), conv_bn_relu(widths[0], widths[0]))
        stages = []
        for in_width, out_width, count in zip(widths[:-1], widths[1:], blocks):
            layers = [BasicBlock(in_width, out_width, stride=2)]
            layers += [BasicBlock(out_width, out_width) for _ in range(count - 1)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        levels = [self.stem(x)]
        for stage in self.stages:
            levels.append(stage(levels[-1]))
        return levels


class Decoder(nn.Module):
    """Top-down path: upsample the coarser decoder map, concatenate the encoder skip, fuse.

    Returns decoder maps for every level (same strides as the encoder levels).
    """

    def __init__(self, encoder_widths: tuple[int, ...], decoder_widths: tuple[int, ...]) -> None:
        super().__init__()
        self.top = conv_bn_relu(encoder_widths[-1], decoder_widths[-1])
        self.fuse = nn.ModuleList(
            nn.Sequential(
                conv_bn_relu(decoder_widths[i + 1] + encoder_widths[i], decoder_widths[i]),
                conv_bn_relu(decoder_widths[i], decoder_widths[i]),
            )
            for i in range(len(encoder_widths) - 1)
        )

    def forward(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        decoded = [self.top(levels[-1])]
        for i in range(len(levels) - 2, -1, -1):
            up = F.interpolate(decoded[0], size=levels[i].shape[-2:], mode="bilinear", align_corners=False)
            decoded.insert(0, self.fuse[i](torch.cat([up, levels[i]], dim=1)))
        return decoded
