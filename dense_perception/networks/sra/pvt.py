"""PVTv2 (b0-b5, b2-li) and PVT v1 (tiny-large) with Semantic FPN, ADE20K; ``shared/design/sra.md``.

Neither repository publishes trained Semantic-FPN checkpoints for PVTv2 (the README column is empty);
PVT v1's are single Google Drive files. Both catalogue entries are therefore by hand.
"""
from __future__ import annotations

from typing import Mapping

from ..heads.semantic_fpn import FPN, FPNHead
from ..isr import ISRScheme, conv_sra_scheme, linear_sra_scheme
from ..registry import Inference, NetworkSpec, Preprocessing, manual_weights, register_networks
from .backbones import MixTransformer, PyramidVisionTransformer, SRABackbone, SRAConfig
from .network import SRASegmenter

_SMALL = (32, 64, 160, 256)
_WIDE = (64, 128, 320, 512)
_PVT_V2_MLP = (8, 8, 4, 4)
#: PVTv2 variants (heads 1, 2, 5, 8; sr 8, 4, 2, 1).
PVT_V2_VARIANTS: Mapping[str, SRAConfig] = {
    "b0": SRAConfig(_SMALL, (2, 2, 2, 2), _PVT_V2_MLP),
    "b1": SRAConfig(_WIDE, (2, 2, 2, 2), _PVT_V2_MLP),
    "b2": SRAConfig(_WIDE, (3, 4, 6, 3), _PVT_V2_MLP),
    "b2_li": SRAConfig(_WIDE, (3, 4, 6, 3), _PVT_V2_MLP, linear=True),
    "b3": SRAConfig(_WIDE, (3, 4, 18, 3), _PVT_V2_MLP),
    "b4": SRAConfig(_WIDE, (3, 8, 27, 3), _PVT_V2_MLP),
    "b5": SRAConfig(_WIDE, (3, 6, 40, 3), (4, 4, 4, 4)),
}
#: PVT v1 variants (heads 1, 2, 5, 8; MLP ratios 8, 8, 4, 4; sr 8, 4, 2, 1).
PVT_V1_VARIANTS: Mapping[str, SRAConfig] = {
    "tiny": SRAConfig(_WIDE, (2, 2, 2, 2), _PVT_V2_MLP),
    "small": SRAConfig(_WIDE, (3, 4, 6, 3), _PVT_V2_MLP),
    "medium": SRAConfig(_WIDE, (3, 4, 18, 3), _PVT_V2_MLP),
    "large": SRAConfig(_WIDE, (3, 8, 27, 3), _PVT_V2_MLP),
}

PVT_V2_ISR = conv_sra_scheme("PVTv2 (conv SRA)")
PVT_V2_LI_ISR = linear_sra_scheme("PVTv2-li (linear SRA)")
PVT_V1_ISR = conv_sra_scheme("PVT v1 (conv SRA)", map_rounding="floor")

ADE20K_CLASSES = 150


class SemanticFPNNetwork(SRASegmenter):
    """An SRA backbone + mmseg's FPN neck + FPNHead: logits on the stage-1 grid (stride 4)."""

    def __init__(self, backbone: SRABackbone, cfg: SRAConfig, num_classes: int, isr_scheme: ISRScheme,
                 name: str) -> None:
        super().__init__(backbone, FPNHead(num_classes), FPN(cfg.widths), num_classes=num_classes,
                         isr_scheme=isr_scheme, name=name)


# ---- registration: default configurations ----------------------------------------------------------------------------------
#: Parameters (ADE20K heads), for the catalogue's approximate sizes.
_PARAMETERS = {
    "pvt_v2_b0": 7_545_334, "pvt_v2_b1": 17_762_646, "pvt_v2_b2": 29_116_502, "pvt_v2_b2_li": 26_307_158,
    "pvt_v2_b3": 48_992_342, "pvt_v2_b4": 66_309_718, "pvt_v2_b5": 85_709_654,
    "pvt_tiny": 16_981_398, "pvt_small": 28_237_974, "pvt_medium": 47_960_214, "pvt_large": 65_121_430,
}
_ADE20K = dict(task="segmentation", dataset="ade20k", num_classes=ADE20K_CLASSES, input_size=(512, 512),
               preprocessing=Preprocessing("mmseg", (2048, 512), 32), inference=Inference.whole(512))


def _pvt_v2_spec(variant: str) -> NetworkSpec:
    name = f"pvt_v2_{variant}_fpn_ade20k"
    return NetworkSpec(
        name=name, family="pvt_v2", kwargs={"variant": variant, "num_classes": ADE20K_CLASSES},
        description=f"PVTv2-{variant.replace('_', '-')} + Semantic FPN semantic segmentation, ade20k (150 classes)",
        isr=PVT_V2_LI_ISR if PVT_V2_VARIANTS[variant].linear else PVT_V2_ISR,
        weights=(manual_weights(name, 4 * _PARAMETERS[f"pvt_v2_{variant}"],
                                "whai362/PVTv2-Seg: no trained Semantic-FPN checkpoints published (train with its "
                                "configs, or bring your own in the official layout)",
                                "https://github.com/whai362/PVTv2-Seg"),),
        **_ADE20K)


def _pvt_v1_spec(variant: str) -> NetworkSpec:
    name = f"pvt_{variant}_fpn_ade20k"
    return NetworkSpec(
        name=name, family="pvt", kwargs={"variant": variant, "num_classes": ADE20K_CLASSES},
        description=f"PVT-{variant.capitalize()} (v1) + Semantic FPN semantic segmentation, ade20k (150 classes)",
        isr=PVT_V1_ISR,
        weights=(manual_weights(name, 4 * _PARAMETERS[f"pvt_{variant}"],
                                "whai362/PVT segmentation README: one Google Drive file per model (by hand)",
                                "https://github.com/whai362/PVT/tree/v2/segmentation"),),
        **_ADE20K)


@register_networks(*(_pvt_v2_spec(v) for v in PVT_V2_VARIANTS))
def build_pvt_v2(variant: str, num_classes: int = ADE20K_CLASSES, name: str | None = None) -> SemanticFPNNetwork:
    """PVTv2-``variant`` (b0…b5, b2_li) + Semantic FPN."""
    if variant not in PVT_V2_VARIANTS:
        raise ValueError(f"unknown PVTv2 variant {variant!r}; choose from {sorted(PVT_V2_VARIANTS)}")
    cfg = PVT_V2_VARIANTS[variant]
    scheme = PVT_V2_LI_ISR if cfg.linear else PVT_V2_ISR
    return SemanticFPNNetwork(MixTransformer(cfg), cfg, num_classes, scheme, name or f"pvt_v2_{variant}_fpn")


@register_networks(*(_pvt_v1_spec(v) for v in PVT_V1_VARIANTS))
def build_pvt_v1(variant: str, num_classes: int = ADE20K_CLASSES, name: str | None = None) -> SemanticFPNNetwork:
    """PVT v1-``variant`` (tiny…large) + Semantic FPN."""
    if variant not in PVT_V1_VARIANTS:
        raise ValueError(f"unknown PVT v1 variant {variant!r}; choose from {sorted(PVT_V1_VARIANTS)}")
    cfg = PVT_V1_VARIANTS[variant]
    return SemanticFPNNetwork(PyramidVisionTransformer(cfg), cfg, num_classes, PVT_V1_ISR,
                              name or f"pvt_{variant}_fpn")
