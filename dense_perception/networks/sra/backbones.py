"""Spatial-reduction-attention (SRA) backbones: MiT (SegFormer), PVTv2 (incl. b2-li) and PVT v1.

Written from ``shared/design/sra.md`` sections 2-3 and 8. All are four-stage pyramids (strides 4-32) of
pre-norm blocks whose keys and values come from a spatially reduced copy of the tokens; module names
follow the official checkpoints (``backbone.patch_embed{i}``, ``backbone.block{i}.{j}.attn.q/kv/sr/norm/
proj``, ``.mlp.fc1/dwconv.dwconv/fc2``, ``backbone.norm{i}``, PVT v1's ``backbone.pos_embed{i}``).

ISR (section 8): every attention keeps its *effective* key/value ratio in ``ratio`` (an int read at the next
forward). Conv SRA: ``ratio = sr_ratio × pool`` and the extra average pool (kernel = stride = pool, floor)
runs after the ``sr`` conv and its LayerNorm, before ``kv``. Linear SRA (PVTv2-li): ``ratio`` 0 is the
official adaptive 7×7 grid; any other ratio is an average pool of that ratio in its place.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..blocks import LAYER_NORM_EPS, FeedForward, PatchEmbed, adaptive_avg_pool2d, map_to_tokens, tokens_to_map
from ..isr import LINEAR_SRA_GRID, TRAINING_ENCODER
from ..vit import Mlp

#: Block and stage LayerNorm eps (patch-embed and ``attn.norm`` use LAYER_NORM_EPS = 1e-5).
BLOCK_EPS = 1e-6
#: The input size PVT v1's position embeddings were made for, and its stage-1 token count there.
PVT_V1_PRETRAIN_SIZE = 224
PVT_V1_STAGE1_TOKENS = (PVT_V1_PRETRAIN_SIZE // 4) ** 2


@dataclass(frozen=True)
class SRAConfig:
    """Architecture of one SRA backbone variant (four stages)."""

    widths: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    mlp_ratios: tuple[int, int, int, int] = (4, 4, 4, 4)
    heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: tuple[int, int, int, int] = TRAINING_ENCODER
    linear: bool = False  # PVTv2-li: linear SRA (adaptive 7×7 keys/values) and a ReLU in the Mix-FFN


class SpatialReductionAttention(nn.Module):
    """Multi-head attention whose keys/values come from a reduced token map.

    Conv SRA: ``sr`` = Conv(kernel = stride = ``sr_ratio``) → LayerNorm (eps 1e-5) → ISR pool → ``kv``;
    no ``sr``/``norm`` where ``sr_ratio`` is 1. Linear SRA: adaptive 7×7 pool (or the ISR pool) → 1×1
    ``sr`` → LayerNorm → GELU → ``kv``. ``kv`` is one Linear C→2C: keys are its first C outputs.
    """

    def __init__(self, dim: int, heads: int, sr_ratio: int, linear: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.sr_ratio = sr_ratio
        self.linear = linear
        self.ratio = 0 if linear else sr_ratio  # effective key/value ratio; changed by set_isr
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if linear or sr_ratio > 1:
            kernel = 1 if linear else sr_ratio
            self.sr = nn.Conv2d(dim, dim, kernel_size=kernel, stride=kernel)
            self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        else:
            self.sr = None
            self.norm = None

    def reduced_tokens(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The normalised key/value tokens (the input of ``kv``)."""
        if self.linear:
            grid = tokens_to_map(x, h, w)
            grid = adaptive_avg_pool2d(grid, LINEAR_SRA_GRID) if self.ratio == 0 else F.avg_pool2d(
                grid, self.ratio, self.ratio)
            return F.gelu(self.norm(map_to_tokens(self.sr(grid))))
        if self.sr is None:
            return x
        grid = self.sr(tokens_to_map(x, h, w))
        tokens = self.norm(map_to_tokens(grid))
        pool = self.ratio // self.sr_ratio
        if pool > 1:
            grid = F.avg_pool2d(tokens_to_map(tokens, grid.shape[2], grid.shape[3]), pool, pool)
            tokens = map_to_tokens(grid)
        return tokens

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        d = c // self.heads
        q = self.q(x).reshape(b, n, self.heads, d).transpose(1, 2)
        kv = self.kv(self.reduced_tokens(x, h, w))
        k, v = kv.reshape(b, kv.shape[1], 2, self.heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # scale = head_dim^-0.5, as the official code
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class PlainMlp(Mlp):
    """PVT v1's MLP: the ViT's (fc1 → GELU (exact) → fc2), called like the Mix-FFN (with the token
    map's size, which it does not need)."""

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x)


class SRABlock(nn.Module):
    """Pre-norm block (norms eps 1e-6): ``x + Attn(norm1(x))`` then ``x + MLP(norm2(x))``."""

    def __init__(self, dim: int, heads: int, hidden: int, sr_ratio: int, linear: bool, mix_ffn: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_EPS)
        self.attn = SpatialReductionAttention(dim, heads, sr_ratio, linear)
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_EPS)
        self.mlp: nn.Module = FeedForward(dim, hidden, relu=linear) if mix_ffn else PlainMlp(dim, hidden)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), h, w)
        return x + self.mlp(self.norm2(x), h, w)


def _stage_blocks(cfg: SRAConfig, i: int, mix_ffn: bool) -> nn.ModuleList:
    dim = cfg.widths[i]
    return nn.ModuleList(
        SRABlock(dim, cfg.heads[i], int(dim * cfg.mlp_ratios[i]), cfg.sr_ratios[i], cfg.linear, mix_ffn)
        for _ in range(cfg.depths[i]))


class SRABackbone(nn.Module):
    """Shared parts of the SRA pyramids: the stage blocks and their attention modules per ISR level."""

    def attention_levels(self) -> list[list[SpatialReductionAttention]]:
        """The attention modules of encoder stages 1-4."""
        return [[blk.attn for blk in getattr(self, f"block{i}")] for i in range(1, 5)]

    def check_input(self, height: int, width: int) -> None:
        """``ValueError`` for an input size the backbone cannot run (besides ISR's own rule)."""


class MixTransformer(SRABackbone):
    """MiT (SegFormer) and PVTv2: overlapping patch embeddings (7×7/4, then 3×3/2), Mix-FFN, stage norms
    (eps 1e-6). Returns the four stage maps (channels-last views)."""

    def __init__(self, cfg: SRAConfig) -> None:
        super().__init__()
        in_ch = 3
        for i, dim in enumerate(cfg.widths):
            kernel, stride = (7, 4) if i == 0 else (3, 2)
            setattr(self, f"patch_embed{i + 1}", PatchEmbed(in_ch, dim, kernel, stride))
            setattr(self, f"block{i + 1}", _stage_blocks(cfg, i, mix_ffn=True))
            setattr(self, f"norm{i + 1}", nn.LayerNorm(dim, eps=BLOCK_EPS))
            in_ch = dim

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i in range(1, 5):
            x, h, w = getattr(self, f"patch_embed{i}")(x)
            for blk in getattr(self, f"block{i}"):
                x = blk(x, h, w)
            x = tokens_to_map(getattr(self, f"norm{i}")(x), h, w)
            outs.append(x)
        return outs


class PyramidVisionTransformer(SRABackbone):
    """PVT v1: non-overlapping patch embeddings (4×4/4, then 2×2/2; maps floor), plain MLP, learned position
    embeddings made for 224×224 and resized to every input (bilinear, align_corners=False), no stage norms.

    ``pos_embed4`` keeps a class-token slot (50 = 1 + 7×7 tokens); its first token is dropped. The
    official resize is skipped whenever a stage has exactly 3136 (= 56×56) tokens: at stage 1 the raw
    56×56 embedding is then added in flat order whatever the map's shape (reproduced); at later stages
    the official code fails, and :meth:`check_input` rejects those sizes.
    """

    def __init__(self, cfg: SRAConfig) -> None:
        super().__init__()
        in_ch = 3
        self.grids = tuple(PVT_V1_PRETRAIN_SIZE // (4 * 2 ** i) for i in range(4))  # 56, 28, 14, 7
        for i, dim in enumerate(cfg.widths):
            patch = 4 if i == 0 else 2
            setattr(self, f"patch_embed{i + 1}", PatchEmbed(in_ch, dim, patch, patch, padding=0))
            tokens = self.grids[i] ** 2 + (1 if i == 3 else 0)
            setattr(self, f"pos_embed{i + 1}", nn.Parameter(torch.zeros(1, tokens, dim)))
            setattr(self, f"block{i + 1}", _stage_blocks(cfg, i, mix_ffn=False))
            in_ch = dim

    def check_input(self, height: int, width: int) -> None:
        h, w = height, width
        for stage in range(1, 5):
            h, w = (h // 4, w // 4) if stage == 1 else (h // 2, w // 2)
            if stage > 1 and h * w == PVT_V1_STAGE1_TOKENS:
                raise ValueError(
                    f"PVT v1 cannot run a {height}x{width} input: its stage-{stage} map is {h}x{w} = "
                    f"{PVT_V1_STAGE1_TOKENS} tokens, where the official code skips the position-embedding "
                    f"resize and fails; use another input size")

    def position_embedding(self, stage: int, h: int, w: int) -> torch.Tensor:
        """Stage ``stage``'s (1-4) position embedding for an ``h``×``w`` map, ``[1, h·w, C]``."""
        embed = getattr(self, f"pos_embed{stage}")
        if stage == 4:
            embed = embed[:, 1:]
        if h * w == PVT_V1_STAGE1_TOKENS:  # the official shortcut (see the class doc)
            return embed
        grid = self.grids[stage - 1]
        embed = embed.reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        embed = F.interpolate(embed, size=(h, w), mode="bilinear", align_corners=False)
        return embed.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i in range(1, 5):
            x, h, w = getattr(self, f"patch_embed{i}")(x)
            x = x + self.position_embedding(i, h, w)
            for blk in getattr(self, f"block{i}"):
                x = blk(x, h, w)
            x = tokens_to_map(x, h, w)
            outs.append(x)
        return outs
