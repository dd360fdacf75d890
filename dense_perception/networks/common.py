"""Small pieces every network shares: input validation, the fill rule used by the golden references,
mmseg's bilinear resize and ``ConvModule``."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def check_image_batch(x: object, multiple_of: int = 1) -> None:
    """Reject anything that is not a float ``[B, 3, H, W]`` tensor with non-zero sizes.

    Raises ``TypeError`` for a non-tensor or non-float tensor and ``ValueError`` for a wrong rank,
    channel count, an empty dimension, or (with ``multiple_of``) H or W not divisible by it.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor [B,3,H,W], got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point tensor (normalised image), got dtype {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"expected a 4-D tensor [B,3,H,W], got shape {tuple(x.shape)}")
    if x.shape[1] != 3:
        raise ValueError(f"expected 3 channels in dimension 1, got shape {tuple(x.shape)}")
    if 0 in x.shape:
        raise ValueError(f"empty input: shape {tuple(x.shape)}")
    if multiple_of > 1 and (x.shape[2] % multiple_of or x.shape[3] % multiple_of):
        raise ValueError(
            f"height and width must be multiples of {multiple_of}, got {x.shape[2]}x{x.shape[3]}"
        )


def fill_reference_weights(net: nn.Module, stabilise_running_var: bool = True) -> dict[str, torch.Tensor]:
    """The seeded weight rule of ``shared/reference/README.md``, as a state_dict for ``net``'s keys.

    Sorted key index ``i`` seeds ``torch.Generator().manual_seed(1000 + i)``; weights with 2+ dims get
    ``0.02·randn``, 1-D weights ``1 + 0.1·randn``, other floats ``0.1·randn`` (``running_var``:
    ``|0.1·randn| + 0.5`` when ``stabilise_running_var``); integer buffers keep their value.
    It stands in for an official checkpoint in tests and benchmarks (same keys, same shapes).
    """
    out: dict[str, torch.Tensor] = {}
    for i, (name, tensor) in enumerate(sorted(net.state_dict().items())):
        if not tensor.is_floating_point():
            out[name] = tensor.clone()
            continue
        g = torch.Generator().manual_seed(1000 + i)
        noise = torch.randn(tensor.shape, generator=g)
        if name.endswith(".weight") and tensor.dim() >= 2:
            value = noise * 0.02
        elif name.endswith(".weight"):
            value = 1 + 0.1 * noise
        elif stabilise_running_var and name.endswith("running_var"):
            value = (0.1 * noise).abs() + 0.5
        else:
            value = 0.1 * noise
        out[name] = value.to(tensor.dtype)
    return out


def resize_bilinear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """mmseg's ``resize``: bilinear, ``align_corners=False``, no antialias, to ``size`` (h, w).

    A map already of that size is returned as it is (the resize would be an exact copy). Sizes are
    taken as Python ints, so an exported graph has them as constants (one graph per input size).
    """
    size = (int(size[0]), int(size[1]))
    if (int(x.shape[2]), int(x.shape[3])) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ConvModule(nn.Module):
    """mmcv's ``ConvModule`` as the mmseg heads build it: ``conv`` → ``bn`` (eps 1e-5) → ReLU.

    ``norm_act=False`` gives the bare convolution *with* a bias (mmcv's ``bias='auto'``: a bias only
    when no norm follows), as the per-branch convs of HRViT's SegFormer-style head use it. Padding is
    ``kernel // 2`` (same size for odd kernels). Keys: ``conv.weight`` [+ ``conv.bias``], ``bn.*``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 1, norm_act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=not norm_act)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-5) if norm_act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is None:
            return x
        return torch.relu(self.bn(x))
