"""HRViT (CVPR 2022): a multi-branch, HRNet-shaped backbone of cross-shaped stripe attention blocks,
with HRViT's own SegFormer-style all-MLP head or UperNet.

Written from ``shared/design/hrvit.md``. Module and parameter names follow the official mmseg
state_dict (``backbone.stem``, ``backbone.features.{0..11}``, ``decode_head.*``, UperNet's
``auxiliary_head.*``) so checkpoints trained with the official code load strictly. No checkpoints
were released (design §8): the catalogue can only offer "bring your own".

Shape of the backbone: a stem to stride 4, then six (fusion, stage) pairs; fusions 2, 4 and 8 add a
branch (strides 8, 16, 32) made from every existing branch. Because a fusion upsamples with nearest
×2/×4/×8, every branch must be an exact power-of-two fraction of branch 0: the input must satisfy
``H mod 32 ∈ {0, 29, 30, 31}`` (same for W), checked before the forward (:func:`hrvit_size_problem`).

Two variants of the official configs do not run as written (design §6); they are built the way that
runs and matches the published parameter counts: b2's heads take the b2 backbone's 240-channel third
branch (the configs say 192), and b3-UperNet uses the b3 backbone (its config names b1's).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import ConvModule, resize_bilinear
from .blocks import map_to_tokens, tokens_to_map
from .registry import Inference, NetworkSpec, Preprocessing, manual_weights, register_networks
from .segmentor import EncoderDecoderSegmentor
from .upernet import FCNHead, UPerHead

#: Every LayerNorm (PyTorch's default eps) and every BatchNorm (mmcv SyncBN) of HRViT.
NORM_EPS = 1e-5
#: Residues of H (and W) modulo 32 that the official network runs with (design §3.2).
SIZE_RESIDUES: frozenset[int] = frozenset({0, 29, 30, 31})
SIZE_RULE = "H mod 32 and W mod 32 must each be 0, 29, 30 or 31 (the branch maps must halve exactly)"


def hrvit_side_fits(side: int) -> bool:
    """Whether an input side ``n`` gives stride-4 maps ``ceil(ceil(n/2)/2)`` divisible by 8."""
    return side > 0 and side % 32 in SIZE_RESIDUES


def fit_hrvit_side(side: int) -> int:
    """The smallest side ≥ ``side`` that satisfies HRViT's rule (``side`` itself when it does)."""
    return side if hrvit_side_fits(side) else -(-side // 32) * 32


def hrvit_size_problem(height: int, width: int) -> str | None:
    """Why HRViT cannot run on a ``height``×``width`` input, or None."""
    bad = [f"{what} {side} (mod 32 = {side % 32})" for what, side in (("height", height), ("width", width))
           if not hrvit_side_fits(side)]
    if not bad:
        return None
    return (f"HRViT cannot run on a {height}x{width} input: {', '.join(bad)}; {SIZE_RULE}. The nearest "
            f"size that runs is {fit_hrvit_side(height)}x{fit_hrvit_side(width)} (each side rounded up, as the "
            f"pre-processing does unless an input size is forced)")


@dataclass(frozen=True)
class HRViTConfig:
    """Architecture of one HRViT variant (design §2)."""

    widths: tuple[int, int, int, int]  # branch widths at strides 4, 8, 16, 32
    dim_head: int
    mlp_ratios: tuple[int, int, int, int]  # MixCFN hidden = ratio × width, per branch
    blocks: tuple[tuple[int, ...], ...]  # blocks per branch, for each of the six stages
    segformer_width: int  # embedding width of the SegFormer-style head
    stem_width: int = 64
    stripes: tuple[int, int, int, int] = (1, 2, 7, 7)  # stripe width per branch


_STAGES_B1 = ((1,), (1, 1), (1, 1, 6), (1, 1, 6), (1, 1, 6, 2), (1, 1, 2, 2))
VARIANTS: dict[str, HRViTConfig] = {
    "b1": HRViTConfig(widths=(32, 64, 128, 256), dim_head=32, mlp_ratios=(4, 4, 4, 4), blocks=_STAGES_B1,
                      segformer_width=256),
    "b2": HRViTConfig(widths=(48, 96, 240, 384), dim_head=24, mlp_ratios=(2, 3, 3, 3),
                      blocks=_STAGES_B1[:5] + ((1, 1, 6, 2),), segformer_width=256),
    "b3": HRViTConfig(widths=(64, 128, 256, 512), dim_head=32, mlp_ratios=(2, 2, 2, 2),
                      blocks=_STAGES_B1[:4] + ((1, 1, 6, 3), (1, 1, 6, 3)), segformer_width=768),
}
HEADS = ("segformer", "upernet")


# ---- attention -------------------------------------------------------------------------------
def stripe_attention(q: torch.Tensor, v: torch.Tensor, stripe: int, heads: int) -> torch.Tensor:
    """Attention inside stripes of ``stripe`` consecutive full rows; the keys are the values.

    ``q``, ``v``: ``[B, rows, cols, C]`` maps, channels split head-major into ``heads`` heads. Rows
    are zero-padded at the bottom to a multiple of ``stripe``; the padded keys (all in the last
    stripe) are masked out and the padded query rows cropped. Scale ``(C/heads)^-0.5``.
    """
    batch, rows, cols, channels = q.shape
    pad = -rows % stripe
    if pad:
        q, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, v))
    stripes, length = (rows + pad) // stripe, stripe * cols

    def windows(t: torch.Tensor) -> torch.Tensor:  # [B, stripes, heads, stripe·cols, C/heads]
        return t.reshape(batch, stripes, length, heads, channels // heads).transpose(2, 3)

    mask = None
    if pad:  # window-major token index; the padded ones are the last pad·cols
        index = torch.arange(stripes * length, device=q.device).reshape(stripes, 1, 1, length)
        mask = index < (stripes * length - pad * cols)
    kv = windows(v)
    out = F.scaled_dot_product_attention(windows(q), kv, kv, attn_mask=mask)
    return out.transpose(2, 3).reshape(batch, stripes * stripe, cols, channels)[:, :rows]


def half_heads(dim: int, dim_head: int) -> int:
    """Heads per channel half: the half width over the head width ``dim / (dim // dim_head)``, or one
    head of the whole half when the half is narrower than that (branch 0 of b1: one head of 16)."""
    head_width = dim // max(1, dim // dim_head)
    half = dim // 2
    return 1 if half < head_width else half // head_width


class CrossShapedAttention(nn.Module):
    """HRViT attention: q and v from ``to_qkv`` (no key projection), horizontal stripes on the first
    channel half and vertical stripes on the second, plus a Hardswish → depthwise-conv path on v;
    Hardswish of the sum → ``to_out.0`` → ``attn_bn`` (BatchNorm over the token matrix)."""

    def __init__(self, dim: int, dim_head: int, stripe: int) -> None:
        super().__init__()
        self.stripe = stripe
        self.heads = half_heads(dim, dim_head)
        self.to_qkv = nn.Linear(dim, 2 * dim)
        self.parallel_conv = nn.Sequential(nn.Hardswish(), nn.Conv2d(dim, dim, 3, padding=1, groups=dim))
        self.to_out = nn.Sequential(nn.Linear(dim, dim))
        self.attn_bn = nn.BatchNorm1d(dim, eps=NORM_EPS)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, v = self.to_qkv(x).chunk(2, dim=-1)
        v_conv = map_to_tokens(self.parallel_conv(tokens_to_map(v, h, w)))
        half = dim // 2
        q, v = q.reshape(batch, h, w, dim), v.reshape(batch, h, w, dim)
        rows = stripe_attention(q[..., :half], v[..., :half], self.stripe, self.heads)
        cols = stripe_attention(q[..., half:].transpose(1, 2), v[..., half:].transpose(1, 2), self.stripe,
                                self.heads).transpose(1, 2)
        out = torch.cat([rows, cols], dim=-1).reshape(batch, tokens, dim) + v_conv
        out = self.to_out(F.hardswish(out))
        return self.attn_bn(out.reshape(batch * tokens, dim)).reshape(batch, tokens, dim)


class DiversityEnhancedShortcut(nn.Module):
    """DES: the width ``C = k·p`` seen as ``[k, p]``; linear over p, exact GELU, linear over k."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        exponent = int(math.log2(dim))
        self.p = 2 ** (exponent - exponent // 2)
        self.k = dim // self.p
        self.proj_right = nn.Linear(self.p, self.p)
        self.proj_left = nn.Linear(self.k, self.k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj_right(x.reshape(*x.shape[:-1], self.k, self.p)).transpose(-1, -2)
        return self.proj_left(F.gelu(y)).transpose(-1, -2).flatten(-2)


class MixConv(nn.Module):
    """Depthwise 3×3 on the first channel half, depthwise 5×5 on the second (``conv_3``/``conv_5``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        half = dim // 2
        self.conv_3 = nn.Conv2d(half, half, 3, padding=1, groups=half)
        self.conv_5 = nn.Conv2d(dim - half, dim - half, 5, padding=2, groups=dim - half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = x.chunk(2, dim=1)
        return torch.cat([self.conv_3(first), self.conv_5(second)], dim=1)


class MixCFN(nn.Module):
    """``fc1`` (no activation) → :class:`MixConv` on the token map → exact GELU → ``fc2``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.conv = MixConv(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.conv(tokens_to_map(self.fc1(x), h, w))
        return self.fc2(map_to_tokens(F.gelu(x)))


class HRViTBlock(nn.Module):
    """``x + DES(x) + attn(LN(x))`` (DES on the raw input), then ``+ MixCFN(LN(·))``."""

    def __init__(self, dim: int, dim_head: int, mlp_ratio: int, stripe: int) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim, eps=NORM_EPS)
        self.attn = CrossShapedAttention(dim, dim_head, stripe)
        self.des = DiversityEnhancedShortcut(dim)
        self.ffn_norm = nn.LayerNorm(dim, eps=NORM_EPS)
        self.ffn = MixCFN(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.attn(self.attn_norm(x), h, w) + self.des(x) + x
        return self.ffn(self.ffn_norm(x), h, w) + x


# ---- backbone --------------------------------------------------------------------------------
class Stem(nn.Module):
    """Two 3×3 stride-2 convs (with bias) each followed by BatchNorm and ReLU: stride 4."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width // 2, 3, 2, 1)
        self.bn1 = nn.BatchNorm2d(width // 2, eps=NORM_EPS)
        self.conv2 = nn.Conv2d(width // 2, width, 3, 2, 1)
        self.bn2 = nn.BatchNorm2d(width, eps=NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(x)))


def _fusion_path(in_width: int, out_width: int, target: int, source: int) -> nn.Module:
    """How branch ``source`` reaches branch ``target``: itself, strided depthwise conv + BN + 1×1 conv +
    BN (down), or 1×1 conv + BN + nearest upsampling (up)."""
    if source == target:
        return nn.Identity()
    if source < target:
        s = 2 ** (target - source)
        return nn.Sequential(
            nn.Conv2d(in_width, in_width, s + 1, s, s // 2, groups=in_width, bias=False),
            nn.BatchNorm2d(in_width, eps=NORM_EPS),
            nn.Conv2d(in_width, out_width, 1),
            nn.BatchNorm2d(out_width, eps=NORM_EPS))
    return nn.Sequential(nn.Conv2d(in_width, out_width, 1), nn.BatchNorm2d(out_width, eps=NORM_EPS),
                         nn.Upsample(scale_factor=2 ** (source - target), mode="nearest"))


class Fusion(nn.Module):
    """Each output branch = exact GELU of the sum of every input branch brought to its resolution
    (``blocks.{target}.{source}``); a growing fusion has one output branch more than inputs."""

    def __init__(self, in_widths: Sequence[int], out_widths: Sequence[int]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleList(_fusion_path(in_width, out_width, target, source)
                          for source, in_width in enumerate(in_widths))
            for target, out_width in enumerate(out_widths))

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = []
        for paths in self.blocks:
            total = paths[0](maps[0])
            for path, x in zip(paths[1:], maps[1:]):
                total = total + path(x)
            outs.append(F.gelu(total))
        return outs


class PatchEmbed(nn.Module):
    """1×1 conv → depthwise 3×3 conv (no stride, no activation) → tokens → LayerNorm."""

    def __init__(self, in_width: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(in_width, width, 1), nn.Conv2d(width, width, 3, padding=1, groups=width))
        self.norm = nn.LayerNorm(width, eps=NORM_EPS)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        return self.norm(map_to_tokens(x)), int(x.shape[2]), int(x.shape[3])


class Stage(nn.Module):
    """Per branch: patch embedding, the branch's HRViT blocks, a final LayerNorm; maps in, maps out."""

    def __init__(self, in_widths: Sequence[int], cfg: HRViTConfig, blocks: Sequence[int]) -> None:
        super().__init__()
        widths = cfg.widths[:len(blocks)]
        self.patch_embed = nn.ModuleList(PatchEmbed(i, o) for i, o in zip(in_widths, widths))
        self.branches = nn.ModuleList(
            nn.ModuleList(HRViTBlock(widths[b], cfg.dim_head, cfg.mlp_ratios[b], cfg.stripes[b]) for _ in range(n))
            for b, n in enumerate(blocks))
        self.norm = nn.ModuleList(nn.LayerNorm(width, eps=NORM_EPS) for width in widths)

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = []
        for embed, blocks, norm, x in zip(self.patch_embed, self.branches, self.norm, maps):
            tokens, h, w = embed(x)
            for block in blocks:
                tokens = block(tokens, h, w)
            outs.append(tokens_to_map(norm(tokens), h, w).contiguous())
        return outs


class HRViTBackbone(nn.Module):
    """Stem, then ``features``: (fusion, stage) × 6. Returns the four branch maps (strides 4-32)."""

    def __init__(self, cfg: HRViTConfig) -> None:
        super().__init__()
        self.stem = Stem(cfg.stem_width)
        features: list[nn.Module] = []
        widths = [cfg.stem_width]
        for blocks in cfg.blocks:
            fused = widths + [cfg.widths[len(widths)]] if len(blocks) > len(widths) else widths
            features += [Fusion(widths, fused), Stage(fused, cfg, blocks)]
            widths = list(cfg.widths[:len(blocks)])
        self.features = nn.Sequential(*features)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.features([self.stem(x)])


# ---- heads and network -----------------------------------------------------------------------
class HRViTSegFormerHead(nn.Module):
    """HRViT's SegFormer-style head: per branch a 1×1 conv with bias (no norm, no activation),
    resized to branch 0, concatenated stride-4 first, ``fusion_conv`` (conv-BN-ReLU), ``conv_seg``.

    Unlike SegFormer's own head it concatenates in branch order [0, 1, 2, 3] (SegFormer: coarsest
    first) and its per-branch projections are plain biased 1×1 convs (``convs.{i}.conv``).
    """

    def __init__(self, in_widths: Sequence[int], width: int, num_classes: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(ConvModule(c, width, 1, norm_act=False) for c in in_widths)
        self.fusion_conv = ConvModule(width * len(in_widths), width, 1)
        self.conv_seg = nn.Conv2d(width, num_classes, 1)  # after Dropout2d(0.1): identity in eval

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[2:]
        outs = [resize_bilinear(conv(x), size) for conv, x in zip(self.convs, features)]
        return self.conv_seg(self.fusion_conv(torch.cat(outs, dim=1)))


class HRViT(EncoderDecoderSegmentor):
    """HRViT segmentation network. ``net(x)`` gives raw logits ``[B, classes, H/4, W/4]``.

    Args:
        variant: ``b1``, ``b2`` or ``b3``.
        head: ``segformer`` (HRViT's all-MLP head) or ``upernet`` (with the unused auxiliary head).
        num_classes: 150 for ADE20K, 19 for Cityscapes.
    """

    attention_type = "HRViT's cross-shaped stripe attention"

    def __init__(self, variant: str = "b1", head: str = "segformer", num_classes: int = 150,
                 name: str | None = None) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown HRViT variant {variant!r}; choose from {sorted(VARIANTS)}")
        if head not in HEADS:
            raise ValueError(f"unknown HRViT head {head!r}; choose from {', '.join(HEADS)}")
        cfg = VARIANTS[variant]
        if head == "segformer":
            decode_head: nn.Module = HRViTSegFormerHead(cfg.widths, cfg.segformer_width, num_classes)
            auxiliary_head = None
        else:
            decode_head = UPerHead(cfg.widths, num_classes)
            auxiliary_head = FCNHead(cfg.widths[2], num_classes)
        super().__init__(name or f"hrvit_{variant}_{head}", num_classes, HRViTBackbone(cfg), decode_head,
                         auxiliary_head)
        self.variant = variant
        self.head = head

    def input_size_problem(self, height: int, width: int) -> str | None:
        return hrvit_size_problem(height, width)


# ---- registration: default configurations --------------------------------------------------------
#: HRViT released no checkpoints (``shared/design/hrvit.md`` §8): only files trained with the official code.
HRVIT_REPO = "https://github.com/facebookresearch/HRViT"
_CLASSES = {"ade20k": 150, "cityscapes": 19}
#: (head, dataset) of the official configs; fp32 state_dict bytes of each variant's file.
_CONFIGS = (("segformer", "ade20k"), ("segformer", "cityscapes"), ("upernet", "ade20k"))
_FILE_SIZE = {("b1", "segformer", "ade20k"): 32_804_864, ("b1", "segformer", "cityscapes"): 32_670_196,
              ("b1", "upernet", "ade20k"): 143_930_040, ("b2", "segformer", "ade20k"): 83_365_568,
              ("b2", "segformer", "cityscapes"): 83_230_900, ("b2", "upernet", "ade20k"): 198_963_576,
              ("b3", "segformer", "ade20k"): 115_059_760, ("b3", "segformer", "cityscapes"): 114_656_804,
              ("b3", "upernet", "ade20k"): 223_469_288}
#: The official test pipelines (design §7): keep-ratio rescale without alignment, then each side rounded
#: up to one the network runs on; ADE20K whole-image, Cityscapes 1024x1024 windows at stride 768.
_PIPELINES = {dataset: Preprocessing("mmseg", scale, fit_side=fit_hrvit_side, size_problem=hrvit_size_problem)
              for dataset, scale in (("ade20k", (2048, 512)), ("cityscapes", (2048, 1024)))}
_INFERENCE = {"ade20k": Inference.whole(512), "cityscapes": Inference.slide(1024, 768)}
_INPUT_SIZE = {"ade20k": (512, 512), "cityscapes": (1024, 2048)}


def _spec(variant: str, head: str, dataset: str) -> NetworkSpec:
    name = f"hrvit_{variant}_{head}_{dataset}"
    classes = _CLASSES[dataset]
    return NetworkSpec(
        name=name, task="segmentation", family="hrvit",
        kwargs={"variant": variant, "head": head, "num_classes": classes}, dataset=dataset, num_classes=classes,
        description=(f"HRViT-{variant} + {'SegFormer-style' if head == 'segformer' else 'UperNet'} head, "
                     f"{dataset} ({classes} classes); no official checkpoints were released"),
        input_size=_INPUT_SIZE[dataset], preprocessing=_PIPELINES[dataset], inference=_INFERENCE[dataset],
        weights=(manual_weights(name, _FILE_SIZE[(variant, head, dataset)],
                                "facebookresearch/HRViT: no checkpoints released; train one with the official "
                                "code (mmcv checkpoint) and bring it", HRVIT_REPO),),
    )


@register_networks(*(_spec(variant, head, dataset) for variant in VARIANTS for head, dataset in _CONFIGS))
def build_hrvit(variant: str, head: str, num_classes: int, name: str | None = None) -> HRViT:
    """HRViT-``variant`` (b1, b2, b3) with the ``head`` (segformer, upernet) and ``num_classes`` classes."""
    return HRViT(variant=variant, head=head, num_classes=num_classes, name=name)
