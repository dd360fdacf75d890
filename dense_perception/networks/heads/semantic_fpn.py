"""Semantic FPN: mmseg's FPN neck + FPNHead (PVT and PVTv2 segmentation), ``shared/design/sra.md`` section 4.2.

Keys: ``neck.lateral_convs.{i}.conv``, ``neck.fpn_convs.{i}.conv`` (convs with bias, no norm, no activation);
``decode_head.scale_heads.{i}.{k}.conv`` / ``.bn`` (ConvModules at even ``k``; the ×2 upsamples, which
hold no weights, take the odd indices) and ``decode_head.conv_seg`` (the classifier).

Interpolation flags matter: the neck's top-down path is PyTorch's legacy ``nearest`` to the exact lower
size; the head's scale branches upsample ×2 bilinearly (``scale_factor``, align_corners=False) and are then
resized to level 1 -- at odd map sizes the ×2 chain does not land on the level-1 grid and this final resize
aligns it, so it must not be replaced by one direct resize.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..common import ConvModule

#: Channels of the FPN outputs and of the head's scale branches (the official configs).
FPN_CHANNELS = 256
HEAD_CHANNELS = 128
STRIDES = (4, 8, 16, 32)


class Conv(nn.Module):
    """mmcv ``ConvModule`` without norm and activation: a conv with bias, under the key ``conv``."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class FPN(nn.Module):
    """1×1 laterals, cumulative top-down sums (legacy nearest to the lower level's size), 3×3 outputs."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = FPN_CHANNELS) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList(Conv(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(Conv(out_channels, out_channels, 3) for _ in in_channels)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, features)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[2:],
                                                              mode="nearest")
        return [conv(x) for conv, x in zip(self.fpn_convs, laterals)]


class Upsample2x(nn.Module):
    """Bilinear ×2 upsampling (``scale_factor=2``, align_corners=False), as the head's ``nn.Upsample``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def _scale_head(in_ch: int, channels: int, stride: int, base: int) -> nn.Sequential:
    """``max(1, log2(stride / base))`` ConvModules (3×3, BN, ReLU), each followed by a ×2 upsample when
    ``stride > base``."""
    layers: list[nn.Module] = []
    for k in range(max(1, int(math.log2(stride // base)))):
        layers.append(ConvModule(in_ch if k == 0 else channels, channels, 3))
        if stride > base:
            layers.append(Upsample2x())
    return nn.Sequential(*layers)


class FPNHead(nn.Module):
    """Sum of the per-level branches on the level-1 grid, then ``conv_seg`` (1×1, the classifier)."""

    def __init__(self, num_classes: int, in_channels: int = FPN_CHANNELS, channels: int = HEAD_CHANNELS,
                 strides: Sequence[int] = STRIDES) -> None:
        super().__init__()
        self.scale_heads = nn.ModuleList(_scale_head(in_channels, channels, s, strides[0]) for s in strides)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        out = self.scale_heads[0](features[0])
        for head, x in zip(self.scale_heads[1:], features[1:]):
            branch = head(x)
            if branch.shape[2:] != out.shape[2:]:
                branch = F.interpolate(branch, size=out.shape[2:], mode="bilinear", align_corners=False)
            out = out + branch
        return self.conv_seg(out)
