"""The ResNetV2 stem of the DPT-Hybrid backbone (BiT-style R50 without pre-activation, 3 stages).

Written from ``shared/design/dpt.md`` section 4. It reproduces timm 0.4.5's ``vit_base_resnet50_384``
CNN: every convolution is a weight-standardised ``StdConv2dSame`` (population std, ``+ 1e-5`` on the
std, TF "SAME" padding), every norm a ``GroupNorm(32, eps=1e-5)``. Module names follow the official
state_dict (``stem.conv``, ``stem.norm``, ``stages.{s}.blocks.{j}.conv1`` …).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: Weight standardisation eps of timm 0.4.5 (added to the std, not inside a square root).
STD_CONV_EPS = 1e-5
#: GroupNorm of the hybrid ResNet.
GROUP_NORM_GROUPS = 32
GROUP_NORM_EPS = 1e-5


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF "SAME" padding ``(before, after)`` of one spatial dim; the odd pixel goes after."""
    out = -(-size // stride)  # ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int], value: float = 0.0) -> torch.Tensor:
    """Pad ``[B, C, H, W]`` so a ``kernel``/``stride`` window gives ``ceil(n / stride)`` outputs (TF SAME)."""
    top, bottom = same_padding(x.shape[-2], kernel[0], stride[0])
    left, right = same_padding(x.shape[-1], kernel[1], stride[1])
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom), value=value)
    return x


def standardise_weight(weight: torch.Tensor, eps: float = STD_CONV_EPS) -> torch.Tensor:
    """``(W − mean) / (std + eps)`` per output channel over (in, kh, kw); population std."""
    std, mean = torch.std_mean(weight, dim=(1, 2, 3), keepdim=True, unbiased=False)
    return (weight - mean) / (std + eps)


class StdConv2dSame(nn.Conv2d):
    """Bias-free conv with weight standardisation and TF SAME padding.

    The stored ``weight`` is the raw (checkpoint) weight; the standardised one is recomputed on
    every forward, as in the official code, so loading new weights can never leave a stale copy.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 eps: float = STD_CONV_EPS) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, bias=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same(x, self.kernel_size, self.stride)
        return F.conv2d(x, standardise_weight(self.weight, self.eps), None, self.stride)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUP_NORM_GROUPS, channels, eps=GROUP_NORM_EPS)


class MaxPool2dSame(nn.Module):
    """3×3 stride-2 max-pool with TF SAME padding by −inf (padding never wins)."""

    def __init__(self, kernel_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size, self.stride
        x = pad_same(x, (k, k), (s, s), value=float("-inf"))
        return F.max_pool2d(x, k, s)


class Stem(nn.Module):
    """``conv`` 7×7/2 (SAME) → ``norm`` GroupNorm + ReLU → max-pool 3×3/2 (SAME): stride 4."""

    def __init__(self, out_channels: int = 64) -> None:
        super().__init__()
        self.conv = StdConv2dSame(3, out_channels, 7, stride=2)
        self.norm = group_norm(out_channels)
        self.pool = MaxPool2dSame(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.relu(self.norm(self.conv(x))))


class Downsample(nn.Module):
    """Shortcut projection of a stage's first block: 1×1 StdConv (stride s) + GroupNorm, no ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv = StdConv2dSame(in_channels, out_channels, 1, stride=stride)
        self.norm = group_norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class Bottleneck(nn.Module):
    """Post-activation bottleneck: 1×1 → 3×3 (stride) → 1×1, GroupNorm after each, ReLU after the add."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        mid = out_channels // 4
        self.downsample = (
            Downsample(in_channels, out_channels, stride)
            if stride != 1 or in_channels != out_channels else None
        )
        self.conv1 = StdConv2dSame(in_channels, mid, 1)
        self.norm1 = group_norm(mid)
        self.conv2 = StdConv2dSame(mid, mid, 3, stride=stride)
        self.norm2 = group_norm(mid)
        self.conv3 = StdConv2dSame(mid, out_channels, 1)
        self.norm3 = group_norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        y = self.norm3(self.conv3(y))
        return F.relu(y + shortcut)


class ResNetStage(nn.Module):
    """``blocks``: ``depth`` bottlenecks, the stride applied in block 0."""

    def __init__(self, in_channels: int, out_channels: int, depth: int, stride: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(
            Bottleneck(in_channels if j == 0 else out_channels, out_channels, stride if j == 0 else 1)
            for j in range(depth)
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class ResNetV2(nn.Module):
    """Stem + stages of widths ``(256, 512, 1024)``, depths ``(3, 4, 9)``, strides ``(1, 2, 2)``.

    ``forward`` returns every stage output (strides 4, 8, 16): the hybrid DPT taps the first two.
    """

    def __init__(self, depths: Sequence[int] = (3, 4, 9), widths: Sequence[int] = (256, 512, 1024),
                 stem_width: int = 64) -> None:
        super().__init__()
        self.stem = Stem(stem_width)
        stages = []
        in_channels = stem_width
        for s, (depth, width) in enumerate(zip(depths, widths)):
            stages.append(ResNetStage(in_channels, width, depth, stride=1 if s == 0 else 2))
            in_channels = width
        self.stages = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs
