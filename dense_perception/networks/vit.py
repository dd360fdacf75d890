"""The Vision Transformer backbones of DPT (ViT-L/16 and the hybrid's ViT-B/16).

Written from ``shared/design/dpt.md`` sections 3–5. Module names follow timm 0.4.5's
``VisionTransformer`` as the DPT checkpoints store it (``cls_token``, ``pos_embed``,
``patch_embed.proj``, ``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``,
``head``). ``norm`` and ``head`` (the ImageNet classifier) are never used by DPT but keep their keys
so that official checkpoints load strictly.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import ResNetV2

#: LayerNorm eps of every ViT norm (PyTorch's default 1e-5 is wrong here).
LAYER_NORM_EPS = 1e-6


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize a ``[1, 1 + g·g, C]`` position embedding (cls first, square row-major grid) to ``grid``.

    The cls entry is kept; the grid is resized with ``mode`` (DPT: bilinear; ViT-CoMer: bicubic),
    ``align_corners=False``, no antialias. At the stored grid size this is an exact identity.
    """
    cls_pos, grid_pos = pos_embed[:, :1], pos_embed[:, 1:]
    old = math.isqrt(grid_pos.shape[1])
    if (old, old) == tuple(grid):
        return pos_embed
    channels = grid_pos.shape[2]
    grid_pos = grid_pos.reshape(1, old, old, channels).permute(0, 3, 1, 2)
    grid_pos = F.interpolate(grid_pos, size=grid, mode=mode, align_corners=False)
    grid_pos = grid_pos.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], channels)
    return torch.cat([cls_pos, grid_pos], dim=1)


class Attention(nn.Module):
    """Multi-head self-attention with one ``qkv`` Linear (rows ``[q | k | v]``) and ``proj``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)  # scale (c/heads)^-0.5
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """``fc1`` → exact (erf) GELU → ``fc2``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """ViT-L patch embedding: ``proj`` Conv2d ``patch×patch``/``patch`` with bias → ``[B, C, h, w]``."""

    def __init__(self, dim: int, patch: int = 16) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The token map and the (here empty) list of CNN features."""
        return self.proj(x), []


class HybridEmbed(nn.Module):
    """Hybrid embedding: ``backbone`` ResNetV2 (stride 16) → ``proj`` 1×1 Conv2d with bias.

    Also returns the ResNet's stage-0 and stage-1 outputs (DPT's ``layer_1``/``layer_2``).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.backbone = ResNetV2()
        self.proj = nn.Conv2d(1024, dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        stages = self.backbone(x)
        return self.proj(stages[-1]), stages[:-1]


class VisionTransformer(nn.Module):
    """timm-layout ViT that returns the outputs of selected blocks (before the final norm).

    Args:
        dim, depth, heads: width, number of blocks and attention heads.
        hybrid: use the ResNetV2 + 1×1 projection embedding instead of 16×16 patches.
        grid: side of the stored square position-embedding grid (24 for 384×384 training).
        num_classes: rows of the unused ImageNet ``head``.
    """

    def __init__(self, dim: int, depth: int, heads: int, hybrid: bool, grid: int = 24,
                 num_classes: int = 1000) -> None:
        super().__init__()
        self.patch_embed: nn.Module = HybridEmbed(dim) if hybrid else PatchEmbed(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        self.blocks = nn.Sequential(*(Block(dim, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)  # unused by DPT; kept for the keys
        self.head = nn.Linear(dim, num_classes)  # unused ImageNet classifier; kept for the keys

    def forward(self, x: torch.Tensor, taps: Sequence[int]
                ) -> tuple[list[torch.Tensor], list[torch.Tensor], tuple[int, int]]:
        """Run up to the last tapped block.

        Returns:
            the tapped block outputs ``[B, 1 + h·w, C]`` (cls first), the CNN features (hybrid only),
            and the token grid ``(h, w)``.
        """
        grid_map, features = self.patch_embed(x)
        grid = (grid_map.shape[2], grid_map.shape[3])
        tokens = grid_map.flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + resize_pos_embed(self.pos_embed, grid)
        wanted = set(taps)
        outputs: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks[: max(taps) + 1]):
            tokens = block(tokens)
            if i in wanted:
                outputs[i] = tokens
        return [outputs[i] for i in taps], features, grid
