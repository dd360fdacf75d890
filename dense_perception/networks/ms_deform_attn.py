"""Multi-scale deformable attention (Deformable DETR; the ViT-Adapter variant with a value width
ratio) in plain PyTorch: bilinear sampling through ``F.grid_sample``, so it runs on any device and
exports to ONNX ``GridSample`` (opset ≥ 16) -- no compiled extension.

Written from ``shared/design/vit_comer.md`` §3.4. Each query predicts, per head, ``points`` sampling
offsets on each of ``levels`` feature maps and one attention weight per (level, point), softmaxed over
all of them together; the sampled values are summed with those weights.

Sampling convention (that of the official CUDA kernel): a location ``(x, y)`` normalised to [0, 1]
(x right, y down) reads level ``l`` at pixel ``(x·W_l − 0.5, y·H_l − 0.5)`` bilinearly, with zeros
outside the map; i.e. ``grid_sample(align_corners=False, padding_mode="zeros")`` at ``2·loc − 1``.
Offsets are in pixels of each level, divided by ``(W_l, H_l)`` -- width first.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: (height, width) of each level, in the order the level tokens are concatenated.
LevelShapes = Sequence[tuple[int, int]]


def level_reference_points(shapes: LevelShapes, device: torch.device | str | None = None) -> torch.Tensor:
    """Each token's own pixel centre, normalised: ``[1, Σ H_l·W_l, 2]`` of ``((j + 0.5)/W_l, (i + 0.5)/H_l)``
    for the tokens of every level, row-major, concatenated in level order."""
    points = []
    for height, width in shapes:
        ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
        xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=-1))
    return torch.cat(points)[None]


def deformable_sampling(value: torch.Tensor, shapes: LevelShapes, locations: torch.Tensor,
                        weights: torch.Tensor) -> torch.Tensor:
    """Weighted bilinear samples of multi-level values.

    Args:
        value: ``[B, S, heads, D]``, the levels' tokens concatenated (``S = Σ H_l·W_l``).
        shapes: (H_l, W_l) per level, as Python ints.
        locations: ``[B, Q, heads, levels, points, 2]``, normalised (x, y).
        weights: ``[B, Q, heads, levels, points]``.

    Returns:
        ``[B, Q, heads·D]``, heads major.
    """
    batch, _, heads, depth = value.shape
    queries, points = locations.shape[1], locations.shape[4]
    grids = 2 * locations - 1
    out = None
    per_level = value.split([height * width for height, width in shapes], dim=1)
    for level, ((height, width), level_value) in enumerate(zip(shapes, per_level)):
        maps = level_value.permute(0, 2, 3, 1).reshape(batch * heads, depth, height, width)
        grid = grids[:, :, :, level].transpose(1, 2).reshape(batch * heads, queries, points, 2)
        sampled = F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        level_weights = weights[:, :, :, level].transpose(1, 2).reshape(batch * heads, 1, queries, points)
        contribution = (sampled * level_weights).sum(-1)  # [B·heads, D, Q]
        out = contribution if out is None else out + contribution
    assert out is not None, "no levels"
    return out.reshape(batch, heads * depth, queries).transpose(1, 2)


class MultiScaleDeformableAttention(nn.Module):
    """``MSDeformAttn`` with the official keys ``sampling_offsets``, ``attention_weights``,
    ``value_proj`` and ``output_proj``; values are ``value_ratio`` × ``dim`` wide.

    The sampling runs in float32 (as the official CUDA op does under mixed precision) and the result
    is cast back to the value dtype before ``output_proj``.
    """

    def __init__(self, dim: int, heads: int, levels: int, points: int, value_ratio: float = 1.0) -> None:
        super().__init__()
        value_dim = int(dim * value_ratio)
        if value_dim % heads:
            raise ValueError(f"value width {value_dim} is not divisible by {heads} heads")
        self.heads, self.levels, self.points = heads, levels, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, value_dim)
        self.output_proj = nn.Linear(value_dim, dim)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, values: torch.Tensor,
                shapes: LevelShapes) -> torch.Tensor:
        """``query`` [B, Q, dim] with ``reference_points`` [1 or B, Q, 2] (normalised x, y, one point
        for every level); ``values`` [B, S, dim] = the ``shapes`` levels' tokens concatenated."""
        if len(shapes) != self.levels:
            raise ValueError(f"expected {self.levels} levels, got shapes {list(shapes)}")
        batch, queries, _ = query.shape
        value = self.value_proj(values)
        value = value.reshape(batch, value.shape[1], self.heads, -1)
        offsets = self.sampling_offsets(query).reshape(batch, queries, self.heads, self.levels, self.points, 2)
        weights = self.attention_weights(query).reshape(batch, queries, self.heads, self.levels * self.points)
        weights = F.softmax(weights.float(), dim=-1).reshape(batch, queries, self.heads, self.levels, self.points)
        normaliser = torch.tensor([[width, height] for height, width in shapes], dtype=torch.float32,
                                  device=query.device)
        locations = reference_points.float()[:, :, None, None, None, :] + offsets.float() / normaliser[:, None, :]
        sampled = deformable_sampling(value.float(), shapes, locations, weights)
        return self.output_proj(sampled.to(value.dtype))
