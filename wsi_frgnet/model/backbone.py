"""Encoders (ResNet-style, or EfficientNet-Lite0 for ImageNet weights) and the U-Net-style
decoder, built from scratch (no torchvision)."""

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


class SubsampledPointwiseConv(nn.Conv2d):
    """1x1 convolution at stride ``stride``, computed as a subsample then a stride-1 1x1
    convolution: the same result and parameters. In the CPU build of torch 2.13, the backward
    pass of a strided 1x1 channels-last convolution with fewer than 16 input channels corrupts
    memory (METHOD_NOTES §8); the stride-1 kernel is sound."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(in_channels, out_channels, 1, bias=False)
        self.subsample = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x[:, :, :: self.subsample, :: self.subsample])


class BinomialBlur(nn.Module):
    """3x3 binomial low-pass ([1, 2, 1] x [1, 2, 1] / 16) of every channel, reflect-padded,
    then subsampled by ``stride``. Before or as a stride-2 step it removes most of what
    subsampling would alias, so the output moves less when the input shifts by less than the
    stride (Zhang 2019, "Making convolutional networks shift-invariant again"). No parameters."""

    def __init__(self, channels: int, stride: int = 1) -> None:
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        kernel = (taps[:, None] * taps[None, :]) / 16.0
        self.register_buffer("kernel", kernel.expand(channels, 1, 3, 3).clone(), persistent=False)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        return F.conv2d(padded, self.kernel.to(x.dtype), stride=self.stride, groups=x.shape[1])


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual shortcut (ResNet-18 style); with ``antialias``, a
    stride-2 block blurs its input first (:class:`BinomialBlur`)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, antialias: bool = False) -> None:
        super().__init__()
        self.blur: nn.Module = BinomialBlur(in_channels) if antialias and stride != 1 else nn.Identity()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                SubsampledPointwiseConv(in_channels, out_channels, stride),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blur(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class Encoder(nn.Module):
    """Stem (stride 2) then residual stages, each halving resolution.

    Returns the feature maps of every level, level i at stride 2**(i+1). With ``antialias``,
    the stem's first convolution runs at stride 1 and is blurred and subsampled after its ReLU
    (about 2 % more computation), and every stride-2 block blurs its input first.
    """

    def __init__(self, widths: tuple[int, ...], blocks: tuple[int, ...], antialias: bool = False) -> None:
        super().__init__()
        first = conv_bn_relu(3, widths[0], stride=1 if antialias else 2)
        if antialias:
            first.append(BinomialBlur(widths[0], stride=2))
        self.stem = nn.Sequential(first, conv_bn_relu(widths[0], widths[0]))
        stages = []
        for in_width, out_width, count in zip(widths[:-1], widths[1:], blocks):
            layers = [BasicBlock(in_width, out_width, stride=2, antialias=antialias)]
            layers += [BasicBlock(out_width, out_width) for _ in range(count - 1)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        levels = [self.stem(x)]
        for stage in self.stages:
            levels.append(stage(levels[-1]))
        return levels


class MobileBlock(nn.Module):
    """EfficientNet-Lite inverted residual: 1x1 expansion → depthwise k x k → 1x1 projection,
    ReLU6, no squeeze-excitation; a shortcut when shape is kept. Names follow the published
    EfficientNet-Lite0 weights (``expand_conv``, ``bn0``, ...)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        if expansion != 1:
            self.expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self.bn0 = nn.BatchNorm2d(hidden, eps=1e-3)
        self.depthwise_conv = nn.Conv2d(hidden, hidden, kernel, stride=stride, padding=kernel // 2, groups=hidden, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden, eps=1e-3)
        self.project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=1e-3)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if hasattr(self, "expand_conv"):
            out = F.relu6(self.bn0(self.expand_conv(out)))
        out = F.relu6(self.bn1(self.depthwise_conv(out)))
        out = self.bn2(self.project_conv(out))
        return out + x if self.residual else out


class EfficientNetLite0Encoder(nn.Module):
    """EfficientNet-Lite0 without its classifier, for ImageNet weights (``train --encoder``).

    Returns five levels at strides 2, 4, 8, 16, 32 with 16, 24, 40, 112 and 320 channels (the
    outputs of blocks 0, 2, 4, 10 and 15). Stride-2 convolutions pad symmetrically, which
    shifts the features by one input pixel against the padding the weights were trained with;
    training adapts to it.
    """

    # (kernel, stride, expansion, output channels, repeats) per stage.
    STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3), (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
    LEVEL_ENDS = (0, 2, 4, 10, 15)  # last block of each output level

    def __init__(self) -> None:
        super().__init__()
        self.conv_stem = nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(32, eps=1e-3)
        blocks, channels = [], 32
        for kernel, stride, expansion, out_channels, repeats in self.STAGES:
            for repeat in range(repeats):
                blocks.append(MobileBlock(channels, out_channels, kernel, stride if repeat == 0 else 1, expansion))
                channels = out_channels
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu6(self.bn0(self.conv_stem(x)))
        levels = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.LEVEL_ENDS:
                levels.append(x)
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
