"""UperNet (mmseg ``UPerHead``: pyramid pooling on the coarsest map + a feature pyramid) and the
auxiliary ``FCNHead`` that every mmseg UperNet checkpoint carries.

Written from ``shared/design/hrvit.md`` §4.2 and ``shared/design/vit_comer.md`` §4 (mmseg 0.11 and
0.20 agree on the inference path). Keys follow mmseg: ``psp_modules.{s}.1``, ``bottleneck``,
``lateral_convs.{i}``, ``fpn_convs.{i}``, ``fpn_bottleneck``, ``conv_seg``; every ConvModule is
conv (no bias) → BatchNorm (eps 1e-5) → ReLU, every resize bilinear with ``align_corners=False``.

The pyramid pooling averages PyTorch's adaptive-pooling bins (start ``floor(i·n/s)``, end
``ceil((i+1)·n/s)``, overlapping when ``s`` does not divide ``n``) with two small averaging matrices
instead of ``AdaptiveAvgPool2d``: the same numbers up to float rounding, and an ONNX graph at every
input size (the exporter refuses adaptive pooling whose output size does not divide the input's).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .common import ConvModule, resize_bilinear

#: UperNet's width and pyramid-pooling bins in every config of both families.
UPERNET_CHANNELS = 512
POOL_SCALES: tuple[int, ...] = (1, 2, 3, 6)
#: The auxiliary FCN head's width (``auxiliary_head.convs.0``).
AUX_CHANNELS = 256


def adaptive_pool_matrix(size: int, bins: int) -> torch.Tensor:
    """``[bins, size]`` averaging weights of PyTorch's adaptive average pooling along one axis."""
    weights = torch.zeros(bins, size)
    for i in range(bins):
        start, end = (i * size) // bins, -(-((i + 1) * size) // bins)
        weights[i, start:end] = 1.0 / (end - start)
    return weights


def adaptive_avg_pool(x: torch.Tensor, bins: int) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, bins)`` as ``rows @ x @ colsᵀ`` (exportable at any map size)."""
    rows = adaptive_pool_matrix(int(x.shape[2]), bins).to(x)
    cols = adaptive_pool_matrix(int(x.shape[3]), bins).to(x)
    return torch.matmul(torch.matmul(rows, x), cols.t())


class AdaptiveAvgPool(nn.Module):
    """Parameter-free module form of :func:`adaptive_avg_pool` (index 0 of each ``psp_modules`` entry)."""

    def __init__(self, bins: int) -> None:
        super().__init__()
        self.bins = bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return adaptive_avg_pool(x, self.bins)

    def extra_repr(self) -> str:
        return f"bins={self.bins}"


class UPerHead(nn.Module):
    """mmseg ``UPerHead`` at inference: ``[f1..f4]`` (finest first) → logits at the finest map's size.

    Args:
        in_channels: widths of the four input maps.
        num_classes: rows of ``conv_seg``.
        channels: the head's width (512 in every config here).
        pool_scales: pyramid-pooling bins on the coarsest map.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = UPERNET_CHANNELS,
                 pool_scales: Sequence[int] = POOL_SCALES) -> None:
        super().__init__()
        *finer, coarsest = in_channels
        self.psp_modules = nn.ModuleList(
            nn.Sequential(AdaptiveAvgPool(bins), ConvModule(coarsest, channels, 1)) for bins in pool_scales)
        self.bottleneck = ConvModule(coarsest + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvModule(width, channels, 1) for width in finer)
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3) for _ in finer)
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)  # after Dropout2d(0.1): identity in eval

    def pyramid_pooling(self, x: torch.Tensor) -> torch.Tensor:
        """PPM + bottleneck on the coarsest map: ``bottleneck([x, pool1, pool2, pool3, pool6])``."""
        size = x.shape[2:]
        pooled = [resize_bilinear(branch(x), size) for branch in self.psp_modules]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, features)]
        laterals.append(self.pyramid_pooling(features[-1]))
        for i in range(len(laterals) - 1, 0, -1):  # top-down
            laterals[i - 1] = laterals[i - 1] + resize_bilinear(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)] + [laterals[-1]]
        size = outs[0].shape[2:]
        outs = [resize_bilinear(x, size) for x in outs]
        return self.conv_seg(self.fpn_bottleneck(torch.cat(outs, dim=1)))


class FCNHead(nn.Module):
    """mmseg ``FCNHead`` (one 3×3 ConvModule, no input concat) as the auxiliary head of a UperNet
    checkpoint: a training-time loss only, never run at inference, kept so strict loading works."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = AUX_CHANNELS) -> None:
        super().__init__()
        self.convs = nn.Sequential(ConvModule(in_channels, channels, 3))
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.convs(x))
