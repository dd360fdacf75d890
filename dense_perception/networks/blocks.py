"""Building blocks shared by the transformer pyramids (EDAFormer, MiT/SegFormer, PVT, PVTv2).

Tokens are ``[B, h·w, C]`` in row-major order; maps are ``[B, C, h, w]``. The two convert into each other
without copies (:func:`tokens_to_map` gives a channels-last view). Module and parameter names follow
the official checkpoints (``dwconv.dwconv``, ``proj``/``norm``, mmcv's ``conv``/``bn``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: The default LayerNorm eps (patch embeddings, SRA key/value norms, EDAFormer's decoder).
LAYER_NORM_EPS = 1e-5


def tokens_to_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``[B, h·w, C]`` row-major tokens → ``[B, C, h, w]`` without a copy: the result has channels-last
    strides, which convolutions, pooling and resizes take as they are (and keep)."""
    return x.reshape(x.shape[0], h, w, x.shape[2]).permute(0, 3, 1, 2)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w]`` → ``[B, h·w, C]`` row-major tokens (a view when ``x`` is channels-last)."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])


def adaptive_avg_pool2d(x: torch.Tensor, size: int) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, size)``, exportable to ONNX at every input size.

    PyTorch's bins are ``[floor(i·n/size), ceil((i+1)·n/size))``; they overlap and differ in length when
    ``n`` is not a multiple of ``size``, which the ONNX exporter refuses. During export the same bins are
    averaged as two products with constant bin-mean matrices (static shapes make them constants; equal
    to PyTorch's kernel up to float rounding); elsewhere PyTorch's kernel runs.
    """
    h, w = int(x.shape[2]), int(x.shape[3])
    if not torch.onnx.is_in_onnx_export() or (h % size == 0 and w % size == 0):
        return F.adaptive_avg_pool2d(x, size)
    return bin_means(size, h, x) @ x @ bin_means(size, w, x).T


def bin_means(size: int, n: int, like: torch.Tensor) -> torch.Tensor:
    """``[size, n]`` matrix averaging adaptive-pooling bin ``i`` (``[floor(i·n/size), ceil((i+1)·n/size))``)."""
    matrix = torch.zeros(size, n, dtype=like.dtype, device=like.device)
    for i in range(size):
        start, stop = i * n // size, -(-(i + 1) * n // size)
        matrix[i, start:stop] = 1.0 / (stop - start)
    return matrix


class DepthwiseConv(nn.Module):
    """3×3 depthwise conv on a ``[B, C, h, w]`` map (the official key nests it twice: ``dwconv.dwconv``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dwconv(x)


class FeedForward(nn.Module):
    """Mix-FFN: fc1 → (ReLU, when ``relu``) → depthwise 3×3 → GELU (exact) → fc2.

    ``relu`` is set in EDAFormer's encoder and PVTv2-li; MiT and PVTv2 b0-b5 have none.
    Two layouts of the same arithmetic: in torch, linear layers on tokens (the token map is a free
    channels-last view); in an exported ONNX graph, the whole FFN on the ``[B, C, h, w]`` map with fc1/fc2
    as the 1×1 convolutions they are, so the layout changes (Transposes in ONNX) touch the block's width
    rather than the 4-8× wider hidden tensor -- about a tenth of ONNX Runtime fp32 time for EDAFormer-T
    (bench/RESULTS.md), while in torch oneDNN's 1×1 convolutions are slower than the linear layers.
    """

    def __init__(self, dim: int, hidden: int, relu: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.relu = relu
        self.dwconv = DepthwiseConv(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            return self.forward_on_map(x, h, w)
        x = self.fc1(x)
        if self.relu:
            x = F.relu(x, inplace=True)  # fc1's output is not needed again: no second buffer
        x = map_to_tokens(self.dwconv(tokens_to_map(x, h, w)))
        return self.fc2(F.gelu(x))

    def forward_on_map(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The same FFN computed on the token map (the exported graph's layout)."""
        x = F.conv2d(tokens_to_map(x, h, w), self.fc1.weight[:, :, None, None], self.fc1.bias)
        if self.relu:
            x = F.relu(x, inplace=True)
        x = F.gelu(self.dwconv(x))
        return map_to_tokens(F.conv2d(x, self.fc2.weight[:, :, None, None], self.fc2.bias))


class PatchEmbed(nn.Module):
    """Patch embedding: strided conv + LayerNorm (eps 1e-5); returns tokens and the map size.

    ``padding`` defaults to ``kernel // 2`` (the overlapping embeddings of EDAFormer, MiT and PVTv2); PVT v1
    uses ``kernel == stride`` and no padding.
    """

    def __init__(self, in_ch: int, dim: int, kernel: int, stride: int, padding: int | None = None) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_ch, dim, kernel, stride, kernel // 2 if padding is None else padding)
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[2:]
        return self.norm(map_to_tokens(x)), h, w
