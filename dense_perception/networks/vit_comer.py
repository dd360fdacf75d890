"""ViT-CoMer (CVPR 2024): a plain ViT beside a small CNN pyramid, the two exchanging information
through multi-scale deformable attention, with UperNet (ADE20K).

Written from ``shared/design/vit_comer.md``. Module and parameter names follow the official mmseg
state_dict (``backbone.*``, ``decode_head.*``, ``auxiliary_head.*``) so official checkpoints load
strictly.

Data flow: the SPM (a ResNet-like stem) gives maps at strides 4, 8, 16 and 32; the stride 8/16/32 ones
become the *CNN tokens* ``c`` (concatenated along the token axis, stride 8 first). The ViT tokens ``x``
(stride 16) run in four groups of three blocks; around each group a CTI block refreshes ``c`` (MRFP),
adds ``x`` into the stride-16 CNN level, injects ``c`` into ``x`` (CTI-toV), runs the group, and
updates ``c`` from the new ``x`` (CTI-toC; the last group adds four extra CTIs). At the end the CNN
levels plus resized copies of the groups' ViT outputs go through BatchNorms to UperNet.

The CNN token split needs the stride-32 grid to be exactly half the stride-16 one: H and W must be
multiples of 32 (checked before the forward). The position embedding (a 14×14 DeiT grid) is resized
bicubically to every input's grid.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import resize_bilinear
from .blocks import DepthwiseConv, map_to_tokens, tokens_to_map
from .ms_deform_attn import MultiScaleDeformableAttention, level_reference_points
from .registry import Inference, NetworkSpec, Preprocessing, WeightsEntry, manual_weights, register_networks
from .segmentor import EncoderDecoderSegmentor
from .upernet import FCNHead, UPerHead
from .vit import Block, PatchEmbed, resize_pos_embed

#: LayerNorm eps of the ViT and of every CTI module; the BatchNorms keep PyTorch's 1e-5.
LAYER_NORM_EPS = 1e-6
SIZE_MULTIPLE = 32
DEFORM_LEVELS, DEFORM_POINTS = 3, 4
#: ViT blocks (first, last) run inside each CTI block.
BLOCK_GROUPS: tuple[tuple[int, int], ...] = ((0, 2), (3, 5), (6, 8), (9, 11))


@dataclass(frozen=True)
class ViTCoMerConfig:
    """Architecture of one ViT-CoMer variant (design §2)."""

    dim: int
    heads: int  # ViT attention heads (width 64)
    deform_heads: int
    deform_ratio: float  # value width of the deformable attention = ratio × dim
    mrfp_ratio: float  # MRFP hidden = ratio × dim
    cffn_ratio: float = 0.25  # ConvFFN hidden = ratio × dim
    depth: int = 12
    spm_width: int = 64
    pretrain_grid: int = 14  # the position embedding's grid (224 / 16)


VARIANTS: dict[str, ViTCoMerConfig] = {
    "t": ViTCoMerConfig(dim=192, heads=3, deform_heads=6, deform_ratio=1.0, mrfp_ratio=6.0),
    "s": ViTCoMerConfig(dim=384, heads=6, deform_heads=6, deform_ratio=1.0, mrfp_ratio=1.5),
    "b": ViTCoMerConfig(dim=768, heads=12, deform_heads=12, deform_ratio=0.5, mrfp_ratio=1.0),
}


def vit_comer_size_problem(height: int, width: int) -> str | None:
    """Why ViT-CoMer cannot run on a ``height``×``width`` input, or None."""
    if height % SIZE_MULTIPLE == 0 and width % SIZE_MULTIPLE == 0 and min(height, width) > 0:
        return None
    return (f"ViT-CoMer needs height and width that are multiples of {SIZE_MULTIPLE} (its CNN tokens "
            f"are split by stride 8/16/32 level), got {height}x{width}")


# ---- the CNN token levels --------------------------------------------------------------------
@dataclass(frozen=True)
class CnnLevels:
    """The CNN tokens' layout for a ViT grid of ``height``×``width`` (stride 16): levels at strides 8,
    16 and 32, each row-major, concatenated in that order (``16n + 4n + n`` tokens)."""

    height: int
    width: int

    @property
    def shapes(self) -> tuple[tuple[int, int], ...]:
        h, w = self.height, self.width
        return (2 * h, 2 * w), (h, w), (h // 2, w // 2)

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(h * w for h, w in self.shapes)

    def split(self, c: torch.Tensor) -> list[torch.Tensor]:
        """The three levels' tokens ``[B, H_l·W_l, C]``."""
        return list(c.split(self.counts, dim=1))

    def maps(self, c: torch.Tensor) -> list[torch.Tensor]:
        """The three levels as ``[B, C, H_l, W_l]`` maps."""
        return [tokens_to_map(t, h, w).contiguous() for t, (h, w) in zip(self.split(c), self.shapes)]

    def add_vit_tokens(self, c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``c`` with the ViT tokens added to its stride-16 level."""
        fine, middle, coarse = self.split(c)
        return torch.cat([fine, middle + x, coarse], dim=1)


# ---- CTI building blocks ---------------------------------------------------------------------
def _layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=LAYER_NORM_EPS)


class ConvFFN(nn.Module):
    """``fc1`` → one depthwise 3×3 conv applied to each level's map → exact GELU → ``fc2``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DepthwiseConv(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, c: torch.Tensor, levels: CnnLevels) -> torch.Tensor:
        x = torch.cat([map_to_tokens(self.dwconv(m)) for m in levels.maps(self.fc1(c))], dim=1)
        return self.fc2(F.gelu(x))


class MultiKernelDWConv(nn.Module):
    """MRFP's convs: per level, depthwise 3×3 on the first channel half and 5×5 on the second, then
    that level's BatchNorm and exact GELU (``dwconv{1..6}``, ``bn{1,2,3}``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        half = dim // 2
        for level in range(DEFORM_LEVELS):
            setattr(self, f"dwconv{2 * level + 1}", nn.Conv2d(half, half, 3, padding=1, groups=half))
            setattr(self, f"dwconv{2 * level + 2}", nn.Conv2d(half, half, 5, padding=2, groups=half))
            setattr(self, f"bn{level + 1}", nn.BatchNorm2d(dim))

    def forward(self, c: torch.Tensor, levels: CnnLevels) -> torch.Tensor:
        outs = []
        for level, x in enumerate(levels.maps(c)):
            half = x.shape[1] // 2
            small = getattr(self, f"dwconv{2 * level + 1}")(x[:, :half])
            large = getattr(self, f"dwconv{2 * level + 2}")(x[:, half:])
            x = getattr(self, f"bn{level + 1}")(torch.cat([small, large], dim=1))
            outs.append(map_to_tokens(F.gelu(x)))
        return torch.cat(outs, dim=1)


class MRFP(nn.Module):
    """Multi-receptive-field feature pyramid: ``fc1`` → :class:`MultiKernelDWConv` → exact GELU →
    ``fc2``. The GELU comes *twice* (inside the conv block after each BatchNorm, then again here, as
    the official code does; ``shared/design/vit_comer.md`` §3.6 lists only the first). No residual:
    its output replaces the CNN tokens."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = MultiKernelDWConv(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, c: torch.Tensor, levels: CnnLevels) -> torch.Tensor:
        return self.fc2(F.gelu(self.dwconv(self.fc1(c), levels)))


def _deform_attn(cfg: ViTCoMerConfig) -> MultiScaleDeformableAttention:
    return MultiScaleDeformableAttention(cfg.dim, cfg.deform_heads, DEFORM_LEVELS, DEFORM_POINTS, cfg.deform_ratio)


class MultiscaleExtractor(nn.Module):
    """``cfinter``: ``q + attn(LN(q), LN(f))`` over the CNN levels, then ``+ ConvFFN(LN(·))``."""

    def __init__(self, cfg: ViTCoMerConfig) -> None:
        super().__init__()
        self.query_norm = _layer_norm(cfg.dim)
        self.feat_norm = _layer_norm(cfg.dim)
        self.attn = _deform_attn(cfg)
        self.ffn_norm = _layer_norm(cfg.dim)
        self.ffn = ConvFFN(cfg.dim, int(cfg.dim * cfg.cffn_ratio))

    def forward(self, query: torch.Tensor, feat: torch.Tensor, reference_points: torch.Tensor,
                levels: CnnLevels) -> torch.Tensor:
        query = query + self.attn(self.query_norm(query), reference_points, self.feat_norm(feat), levels.shapes)
        return query + self.ffn(self.ffn_norm(query), levels)


class CTIToViT(nn.Module):
    """CTI-toV: deformable self-attention over the CNN tokens (+ ConvFFN), its three levels brought to
    stride 16 and summed, added to the ViT tokens through the ``gamma`` scale."""

    def __init__(self, cfg: ViTCoMerConfig) -> None:
        super().__init__()
        self.query_norm = _layer_norm(cfg.dim)
        self.feat_norm = _layer_norm(cfg.dim)
        self.attn = _deform_attn(cfg)
        self.gamma = nn.Parameter(torch.zeros(cfg.dim))
        self.ffn = ConvFFN(cfg.dim, int(cfg.dim * cfg.cffn_ratio))
        self.ffn_norm = _layer_norm(cfg.dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor, reference_points: torch.Tensor,
                levels: CnnLevels) -> torch.Tensor:
        a = self.attn(self.query_norm(c), reference_points, self.feat_norm(c), levels.shapes)
        a = a + self.ffn(self.ffn_norm(a), levels)
        fine, middle, coarse = levels.maps(a)
        size = levels.shapes[1]
        fine, coarse = map_to_tokens(resize_bilinear(fine, size)), map_to_tokens(resize_bilinear(coarse, size))
        return x + self.gamma * (fine + map_to_tokens(middle) + coarse)


class CTIToCNN(nn.Module):
    """CTI-toC: the new ViT tokens added into the stride-16 CNN level, both LayerNorms applied, then
    ``cfinter`` with the *normalised* tokens as its residual base."""

    def __init__(self, cfg: ViTCoMerConfig) -> None:
        super().__init__()
        self.query_norm = _layer_norm(cfg.dim)
        self.feat_norm = _layer_norm(cfg.dim)
        self.cfinter = MultiscaleExtractor(cfg)

    def forward(self, c: torch.Tensor, x: torch.Tensor, reference_points: torch.Tensor,
                levels: CnnLevels) -> torch.Tensor:
        c = levels.add_vit_tokens(c, x)
        return self.cfinter(self.query_norm(c), self.feat_norm(c), reference_points, levels)


class ExtraCTI(CTIToCNN):
    """The last group's extra CNN refreshers: CTI-toC with its own ConvFFN residual step first."""

    def __init__(self, cfg: ViTCoMerConfig) -> None:
        super().__init__(cfg)
        self.ffn = ConvFFN(cfg.dim, int(cfg.dim * cfg.cffn_ratio))
        self.ffn_norm = _layer_norm(cfg.dim)

    def forward(self, c: torch.Tensor, x: torch.Tensor, reference_points: torch.Tensor,
                levels: CnnLevels) -> torch.Tensor:
        c = levels.add_vit_tokens(c, x)
        c = c + self.ffn(self.ffn_norm(c), levels)
        return self.cfinter(self.query_norm(c), self.feat_norm(c), reference_points, levels)


class CTIBlock(nn.Module):
    """One interaction around a group of ViT blocks (``interactions.{k}``); returns (x, c)."""

    def __init__(self, cfg: ViTCoMerConfig, extra: bool) -> None:
        super().__init__()
        self.cti_tov = CTIToViT(cfg)
        self.cti_toc = CTIToCNN(cfg)
        self.extra_CTIs = nn.ModuleList(ExtraCTI(cfg) for _ in range(4)) if extra else None
        self.mrfp = MRFP(cfg.dim, int(cfg.dim * cfg.mrfp_ratio))

    def forward(self, x: torch.Tensor, c: torch.Tensor, blocks: Sequence[nn.Module],
                reference_points: torch.Tensor, levels: CnnLevels) -> tuple[torch.Tensor, torch.Tensor]:
        c = levels.add_vit_tokens(self.mrfp(c, levels), x)
        x = self.cti_tov(x, c, reference_points, levels)
        for block in blocks:
            x = block(x)
        c = self.cti_toc(c, x, reference_points, levels)
        for cti in self.extra_CTIs or ():
            c = cti(c, x, reference_points, levels)
        return x, c


# ---- backbone --------------------------------------------------------------------------------
class LayerScaleBlock(Block):
    """The ViT block with layer scale: ``x + γ1 ⊙ attn(LN(x))``, then ``x + γ2 ⊙ mlp(LN(x))``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__(dim, heads)
        self.gamma1 = nn.Parameter(torch.ones(dim))
        self.gamma2 = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.gamma1 * self.attn(self.norm1(x))
        return x + self.gamma2 * self.mlp(self.norm2(x))


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


class SpatialPriorModule(nn.Module):
    """The SPM: a ResNet-like stem (stride 4) and three stride-2 conv-BN-ReLU stages, each map
    projected to the ViT width by a biased 1×1 conv (``fc1..fc4``)."""

    def __init__(self, width: int, dim: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(3, width, 2), *_conv_bn_relu(width, width, 1),
                                  *_conv_bn_relu(width, width, 1), nn.MaxPool2d(3, 2, 1))
        self.conv2 = nn.Sequential(*_conv_bn_relu(width, 2 * width, 2))
        self.conv3 = nn.Sequential(*_conv_bn_relu(2 * width, 4 * width, 2))
        self.conv4 = nn.Sequential(*_conv_bn_relu(4 * width, 4 * width, 2))
        self.fc1 = nn.Conv2d(width, dim, 1)
        self.fc2 = nn.Conv2d(2 * width, dim, 1)
        self.fc3 = nn.Conv2d(4 * width, dim, 1)
        self.fc4 = nn.Conv2d(4 * width, dim, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four projected maps, strides 4, 8, 16, 32."""
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        return [self.fc1(c1), self.fc2(c2), self.fc3(c3), self.fc4(c4)]


class ViTCoMerBackbone(nn.Module):
    """Returns ``[f1, f2, f3, f4]`` at strides 4, 8, 16, 32, each ``dim`` wide."""

    def __init__(self, cfg: ViTCoMerConfig) -> None:
        super().__init__()
        dim = cfg.dim
        self.cfg = cfg
        self.patch_embed = PatchEmbed(dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.pretrain_grid ** 2, dim))  # slot 0 unused
        self.blocks = nn.Sequential(*(LayerScaleBlock(dim, cfg.heads) for _ in range(cfg.depth)))
        self.level_embed = nn.Parameter(torch.zeros(3, dim))
        self.spm = SpatialPriorModule(cfg.spm_width, dim)
        self.interactions = nn.Sequential(
            *(CTIBlock(cfg, extra=i == len(BLOCK_GROUPS) - 1) for i in range(len(BLOCK_GROUPS))))
        self.up = nn.ConvTranspose2d(dim, dim, 2, 2)
        for i in range(1, 5):
            setattr(self, f"norm{i}", nn.BatchNorm2d(dim))

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """The DeiT grid (class slot dropped) resized bicubically to ``grid``: ``[1, h·w, dim]``."""
        return resize_pos_embed(self.pos_embed, grid, mode="bicubic")[:, 1:]

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        spm_c1, *spm_levels = self.spm(image)
        c = torch.cat([map_to_tokens(m) + embed for m, embed in zip(spm_levels, self.level_embed)], dim=1)

        patches, _ = self.patch_embed(image)
        h, w = int(patches.shape[2]), int(patches.shape[3])
        levels = CnnLevels(h, w)
        reference_points = level_reference_points(levels.shapes, image.device)
        x = map_to_tokens(patches) + self.position_embedding((h, w))

        vit_maps = []
        for interaction, (first, last) in zip(self.interactions, BLOCK_GROUPS):
            x, c = interaction(x, c, self.blocks[first:last + 1], reference_points, levels)
            vit_maps.append(tokens_to_map(x, h, w))

        c2, c3, c4 = levels.maps(c)
        c1 = self.up(c2) + spm_c1
        cnn_maps = (c1, c2, c3, c4)
        outs = []
        for i, (cnn, vit) in enumerate(zip(cnn_maps, vit_maps), start=1):
            merged = cnn + resize_bilinear(vit, cnn.shape[2:])
            outs.append(getattr(self, f"norm{i}")(merged))
        return outs


# ---- network ---------------------------------------------------------------------------------
class ViTCoMer(EncoderDecoderSegmentor):
    """ViT-CoMer + UperNet. ``net(x)`` gives raw logits ``[B, classes, H/4, W/4]``; H, W multiples of 32.

    Args:
        variant: ``t``, ``s`` or ``b``.
        num_classes: 150 (ADE20K, the only dataset the official segmentation configs train).
    """

    attention_type = "ViT-CoMer's global ViT attention and deformable attention"

    def __init__(self, variant: str = "t", num_classes: int = 150, name: str | None = None) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown ViT-CoMer variant {variant!r}; choose from {sorted(VARIANTS)}")
        cfg = VARIANTS[variant]
        super().__init__(name or f"vit_comer_{variant}_upernet", num_classes, ViTCoMerBackbone(cfg),
                         UPerHead([cfg.dim] * 4, num_classes), FCNHead(cfg.dim, num_classes))
        self.variant = variant
        self.head = "upernet"

    def input_size_problem(self, height: int, width: int) -> str | None:
        return vit_comer_size_problem(height, width)


# ---- registration: default configurations --------------------------------------------------------
#: ViT-CoMer's segmentation README links Baidu Netdisk shares (T and S; B is marked "-"): design §7.
VIT_COMER_SEGMENTATION = "https://github.com/Traffic-X/ViT-CoMer/tree/main/segmentation"
_BAIDU = {"t": "https://pan.baidu.com/s/1J_XgJ058PpK8gqz9E0Caig?pwd=k6mf",
          "s": "https://pan.baidu.com/s/1CDfKeUzCTs5fB0ggy9wYwg?pwd=puqi"}
#: fp32 state_dict bytes of each variant's file.
_FILE_SIZE = {"t": 155_035_464, "s": 245_691_720, "b": 579_136_968}


def _weights(variant: str) -> WeightsEntry:
    name = f"vit_comer_{variant}_upernet_ade20k"
    if variant in _BAIDU:
        return manual_weights(name, _FILE_SIZE[variant], "Traffic-X/ViT-CoMer segmentation README: Baidu Netdisk "
                              "share (download by hand; no file name or hash published)", _BAIDU[variant])
    return manual_weights(name, _FILE_SIZE[variant], "Traffic-X/ViT-CoMer: not released (README lists no "
                          "checkpoint); bring your own", VIT_COMER_SEGMENTATION)


def _spec(variant: str) -> NetworkSpec:
    return NetworkSpec(
        name=f"vit_comer_{variant}_upernet_ade20k", task="segmentation", family="vit_comer",
        kwargs={"variant": variant, "num_classes": 150}, dataset="ade20k", num_classes=150,
        description=f"ViT-CoMer-{variant.upper()} + UperNet, ADE20K (150 classes)",
        input_size=(512, 512),
        # keep-ratio rescale into (2048, 512), ResizeToMultiple(32); slide 512x512 windows at stride 341
        preprocessing=Preprocessing("mmseg", (2048, 512), 32, size_problem=vit_comer_size_problem),
        inference=Inference.slide(512, 341), weights=(_weights(variant),),
    )


@register_networks(*(_spec(variant) for variant in VARIANTS))
def build_vit_comer(variant: str, num_classes: int, name: str | None = None) -> ViTCoMer:
    """ViT-CoMer-``variant`` (t, s, b) + UperNet with ``num_classes`` classes."""
    return ViTCoMer(variant=variant, num_classes=num_classes, name=name)
