"""EDAFormer (ECCV 2024): embedding-free attention encoder + all-attention decoder, with live ISR.

Written from ``shared/design/edaformer.md``. Module and parameter names follow the official mmseg
state_dict (``backbone.*``, ``decode_head.*``) so official checkpoints load strictly.

Attention has no q/k/v projections: the normalised tokens are the queries; keys and values are one
tensor, the token map average-pooled by the level's ISR ratio and passed through a 1×1 conv. The pool
ratio is a plain integer attribute, so ``set_isr`` takes effect at the next forward without a reload.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import LAYER_NORM_EPS, FeedForward, PatchEmbed, map_to_tokens, tokens_to_map
from .common import ConvModule, check_image_batch
from .isr import EDAFORMER_ISR, ISRInterface, ISRSetting
from .registry import Inference, NetworkSpec, Preprocessing, manual_weights, register_networks

# LayerNorm eps is mixed in the official code (design doc, pitfall 1).
_ENCODER_EPS = 1e-6
_DEFAULT_EPS = LAYER_NORM_EPS  # patch-embed norms and every decoder norm

__all__ = ["EDAFormer", "EDAFormerConfig", "EmbeddingFreeAttention", "FeedForward", "VARIANTS", "build_edaformer"]


@dataclass(frozen=True)
class EDAFormerConfig:
    """Architecture of one EDAFormer variant."""

    widths: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    ffn_ratio: float  # encoder FFN hidden = floor(ratio × width)
    decoder_ffn_ratio: int
    fuse_width: int
    heads: tuple[int, int, int, int] = (1, 2, 4, 8)
    decoder_heads: tuple[int, int, int] = (8, 4, 2)  # c4, c3, c2
    decoder_depths: tuple[int, int, int] = (3, 2, 1)  # c4, c3, c2


VARIANTS: dict[str, EDAFormerConfig] = {
    "t": EDAFormerConfig(widths=(32, 64, 128, 256), depths=(2, 2, 10, 2), ffn_ratio=3.8,
                         decoder_ffn_ratio=2, fuse_width=128),
    "b": EDAFormerConfig(widths=(64, 128, 256, 512), depths=(3, 3, 22, 3), ffn_ratio=4.0,
                         decoder_ffn_ratio=1, fuse_width=768),
}


class EmbeddingFreeAttention(nn.Module):
    """EFA: queries are the tokens; keys = values = 1×1 conv of the pooled token map.

    The decoder variant adds LayerNorm (eps 1e-5) and GELU after the 1×1 conv (key ``attn.norm``).
    """

    def __init__(self, dim: int, heads: int, pool: int, decoder: bool) -> None:
        super().__init__()
        self.heads = heads
        self.pool = pool  # effective key/value pooling ratio; changed by set_isr
        self.sr = nn.Conv2d(dim, dim, kernel_size=1)
        self.norm = nn.LayerNorm(dim, eps=_DEFAULT_EPS) if decoder else None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        q = x.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)
        kv = tokens_to_map(x, h, w)
        if self.pool > 1:
            kv = F.avg_pool2d(kv, kernel_size=self.pool, stride=self.pool)
        kv = map_to_tokens(self.sr(kv))
        if self.norm is not None:
            kv = F.gelu(self.norm(kv))
        # Contiguous channels: the fused (flash) CPU/GPU kernels need a unit stride in the last dim and
        # silently fall back to the full score matrix otherwise (1 GB per head at 1024x2048).
        kv = kv.reshape(b, kv.shape[1], self.heads, c // self.heads).transpose(1, 2).contiguous()
        out = F.scaled_dot_product_attention(q, kv, kv)  # memory-efficient kernel; scale = head_dim^-0.5
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + EFA(LN(x))`` then ``x + FFN(LN(x))``."""

    def __init__(self, dim: int, heads: int, hidden: int, pool: int, decoder: bool) -> None:
        super().__init__()
        eps = _DEFAULT_EPS if decoder else _ENCODER_EPS
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = EmbeddingFreeAttention(dim, heads, pool, decoder)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = FeedForward(dim, hidden, relu=not decoder)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), h, w)
        return x + self.mlp(self.norm2(x), h, w)


class EmbeddingFreeTransformer(nn.Module):
    """The EFT encoder; returns the four normalised stage maps."""

    def __init__(self, cfg: EDAFormerConfig) -> None:
        super().__init__()
        in_ch = 3
        for i, (dim, depth, heads) in enumerate(zip(cfg.widths, cfg.depths, cfg.heads), start=1):
            kernel, stride = (7, 4) if i == 1 else (3, 2)
            hidden = int(cfg.ffn_ratio * dim)
            pool = EDAFORMER_ISR.training.encoder[i - 1]
            setattr(self, f"patch_embed{i}", PatchEmbed(in_ch, dim, kernel, stride))
            setattr(self, f"block{i}", nn.ModuleList(
                Block(dim, heads, hidden, pool, decoder=False) for _ in range(depth)))
            setattr(self, f"norm{i}", nn.LayerNorm(dim, eps=_ENCODER_EPS))
            in_ch = dim

    def stages(self) -> list[tuple[PatchEmbed, nn.ModuleList, nn.LayerNorm]]:
        return [(getattr(self, f"patch_embed{i}"), getattr(self, f"block{i}"), getattr(self, f"norm{i}"))
                for i in range(1, 5)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for embed, blocks, norm in self.stages():
            x, h, w = embed(x)
            for blk in blocks:
                x = blk(x, h, w)
            x = tokens_to_map(norm(x), h, w)
            outs.append(x)
        return outs


class EDAFormerHead(nn.Module):
    """All-attention decoder: 3/2/1 EFA blocks on c4/c3/c2, upsample to c2, concat [c4,c3,c2], fuse, classify."""

    LEVELS = ("c4", "c3", "c2")
    _NAMES = {"c4": ("attn4", "attn44", "attn444"), "c3": ("attn3", "attn33"), "c2": ("attn2",)}

    def __init__(self, cfg: EDAFormerConfig, num_classes: int) -> None:
        super().__init__()
        widths = {"c4": cfg.widths[3], "c3": cfg.widths[2], "c2": cfg.widths[1]}
        for level, heads, depth, pool in zip(self.LEVELS, cfg.decoder_heads, cfg.decoder_depths,
                                             EDAFORMER_ISR.training.decoder):
            dim = widths[level]
            for name in self._NAMES[level][:depth]:
                setattr(self, name, Block(dim, heads, dim * cfg.decoder_ffn_ratio, pool, decoder=True))
        self.linear_fuse = ConvModule(sum(widths.values()), cfg.fuse_width)
        self.linear_pred = nn.Conv2d(cfg.fuse_width, num_classes, 1)
        # Created by the mmseg base class, unused in the forward, present in every checkpoint.
        self.conv_seg = nn.Conv2d(128, num_classes, 1)

    def level_blocks(self, level: str) -> list[Block]:
        return [getattr(self, name) for name in self._NAMES[level]]

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        _, c2, c3, c4 = features
        size = c2.shape[2:]
        outs = []
        for level, x in zip(self.LEVELS, (c4, c3, c2)):
            h, w = x.shape[2:]
            tokens = map_to_tokens(x)
            for blk in self.level_blocks(level):
                tokens = blk(tokens, h, w)
            x = tokens_to_map(tokens, h, w)
            if x.shape[2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            outs.append(x)
        return self.linear_pred(self.linear_fuse(torch.cat(outs, dim=1)))


class EDAFormer(ISRInterface, nn.Module):
    """EDAFormer segmentation network. ``net(x)`` gives raw logits ``[B, classes, ceil(H/8), ceil(W/8)]``.

    ISR (:class:`~.isr.ISRInterface`): ``set_isr(ratio)`` / ``set_isr(encoder=[...], decoder=[...])`` change
    the key/value pools of the encoder stages and decoder levels from the next forward on.
    """

    isr_scheme = EDAFORMER_ISR

    def __init__(self, variant: str = "t", num_classes: int = 150, name: str | None = None) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown EDAFormer variant {variant!r}; choose from {sorted(VARIANTS)}")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be ≥ 1, got {num_classes}")
        self.name = name or f"edaformer_{variant}"
        self.variant = variant
        self.num_classes = int(num_classes)
        cfg = VARIANTS[variant]
        self.backbone = EmbeddingFreeTransformer(cfg)
        self.decode_head = EDAFormerHead(cfg, self.num_classes)

    # ---- ISR ---------------------------------------------------------------------------------
    def _attention_levels(self) -> list[list[EmbeddingFreeAttention]]:
        """Attention modules per ISR level: encoder stages 1-4, then decoder c4, c3, c2."""
        levels = [[blk.attn for blk in blocks] for _, blocks, _ in self.backbone.stages()]
        levels += [[blk.attn for blk in self.decode_head.level_blocks(lv)] for lv in EDAFormerHead.LEVELS]
        return levels

    def _read_isr(self) -> ISRSetting:
        pools = [level[0].pool for level in self._attention_levels()]
        return ISRSetting(tuple(pools[:4]), tuple(pools[4:]))

    def _write_isr(self, setting: ISRSetting | None) -> None:
        assert setting is not None  # EDAFORMER_ISR validates: always a setting
        for level, pool in zip(self._attention_levels(), setting.encoder + setting.decoder):
            for attn in level:
                attn.pool = pool

    # ---- forward -----------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four encoder stage maps (strides 4, 8, 16, 32)."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x)
        self.check_isr(int(x.shape[2]), int(x.shape[3]))
        return self.decode_head(self.backbone(x)).contiguous()  # channels-last inside, NCHW out


_CLASSES = {"ade20k": 150, "cityscapes": 19, "cocostuff": 171}
#: The official test pipelines: keep-ratio rescale into (long, short), aligned to 32 except Cityscapes.
_PREPROCESSING = {"ade20k": Preprocessing("mmseg", (2048, 512), 32),
                  "cocostuff": Preprocessing("mmseg", (2048, 512), 32),
                  "cityscapes": Preprocessing("mmseg", (2048, 1024))}
_INPUT_SIZE = {"ade20k": (512, 512), "cocostuff": (512, 512), "cityscapes": (1024, 2048)}
#: The official test modes (``shared/design/edaformer.md`` section 6): Cityscapes slides 1024x1024 windows.
_INFERENCE = {"ade20k": Inference.whole(512), "cocostuff": Inference.whole(512),
              "cityscapes": Inference.slide(1024, 768)}
#: fp32 state_dict bytes of the official files (an mmcv file holding optimizer state is larger).
_FILE_SIZE = {("t", "ade20k"): 19_798_088, ("t", "cityscapes"): 19_662_896, ("t", "cocostuff"): 19_819_760,
              ("b", "ade20k"): 117_836_216, ("b", "cityscapes"): 117_365_664, ("b", "cocostuff"): 117_911_648}
EDAFORMER_FOLDER = "https://drive.google.com/drive/u/0/folders/1hiAFQcfH9qd37WOc1_HMB0vKzbY-IWrO"


def _specs() -> tuple[NetworkSpec, ...]:
    return tuple(
        NetworkSpec(
            name=f"edaformer_{variant}_{dataset}", task="segmentation", family="edaformer",
            kwargs={"variant": variant, "num_classes": n}, dataset=dataset, num_classes=n,
            description=f"EDAFormer-{variant.upper()} semantic segmentation, {dataset} ({n} classes)",
            input_size=_INPUT_SIZE[dataset], preprocessing=_PREPROCESSING[dataset], isr=EDAFORMER_ISR,
            inference=_INFERENCE[dataset],
            weights=(manual_weights(f"edaformer_{variant}_{dataset}", _FILE_SIZE[(variant, dataset)],
                                    "hyunwoo137/EDAFormer README: Google Drive folder (download by hand)",
                                    EDAFORMER_FOLDER),),
        )
        for variant in ("t", "b") for dataset, n in _CLASSES.items()
    )


@register_networks(*_specs())
def build_edaformer(variant: str, num_classes: int, name: str | None = None) -> EDAFormer:
    """EDAFormer ``variant`` ("t" or "b") with a ``num_classes`` head."""
    return EDAFormer(variant=variant, num_classes=num_classes, name=name)
