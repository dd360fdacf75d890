"""SegFormer (NeurIPS 2021): MiT-B0…B5 encoder + the all-MLP head; ``shared/design/sra.md`` sections 3-4.1.

Registered for ADE20K (150 classes; B5 at 640×640) and Cityscapes (19 classes). Official checkpoints load
strictly; Hugging Face ``SegformerForSemanticSegmentation`` files are converted on load
(:meth:`SegFormer.adapt_state_dict`, :mod:`.hf`).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..blocks import map_to_tokens, tokens_to_map
from ..common import ConvModule
from ..isr import conv_sra_scheme
from ..registry import Inference, NetworkSpec, Preprocessing, manual_weights, register_networks
from .backbones import MixTransformer, SRAConfig
from .network import SRASegmenter

_MIT_SMALL = (32, 64, 160, 256)
_MIT_WIDE = (64, 128, 320, 512)
#: MiT variants: widths and depths (heads 1, 2, 5, 8; MLP ratio 4; sr 8, 4, 2, 1).
MIT_VARIANTS: Mapping[str, SRAConfig] = {
    "b0": SRAConfig(_MIT_SMALL, (2, 2, 2, 2)),
    "b1": SRAConfig(_MIT_WIDE, (2, 2, 2, 2)),
    "b2": SRAConfig(_MIT_WIDE, (3, 4, 6, 3)),
    "b3": SRAConfig(_MIT_WIDE, (3, 4, 18, 3)),
    "b4": SRAConfig(_MIT_WIDE, (3, 8, 27, 3)),
    "b5": SRAConfig(_MIT_WIDE, (3, 6, 40, 3)),
}
#: The head's embedding width (``decoder_params.embed_dim``).
HEAD_WIDTH = {"b0": 256, "b1": 256, "b2": 768, "b3": 768, "b4": 768, "b5": 768}
#: Channels of the unused ``decode_head.conv_seg`` (mmseg's BaseDecodeHead, ``channels=128``).
UNUSED_CONV_SEG_CHANNELS = 128

SEGFORMER_ISR = conv_sra_scheme("SegFormer (MiT, conv SRA)")


class LinearProjection(nn.Module):
    """The head's per-level ``MLP``: a Linear (key ``proj``) on every position of a ``[B, C, h, w]`` map.

    ``then`` (``[E', E]``) composes a further linear map after it (the level's slice of ``linear_fuse``),
    so both run as one product on the level's own, low-resolution grid.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_ch, out_ch)

    def forward(self, x: torch.Tensor, then: torch.Tensor | None = None) -> torch.Tensor:
        weight, bias = self.proj.weight, self.proj.bias
        if then is not None:
            weight, bias = then @ weight, then @ bias
        return tokens_to_map(F.linear(map_to_tokens(x), weight, bias), x.shape[2], x.shape[3])


class FuseConv(ConvModule):
    """``linear_fuse``: 1×1 conv (no bias) → BatchNorm → ReLU; ``convolved=True`` takes an input the conv
    has already been applied to (the head folds it into the per-level projections)."""

    def forward(self, x: torch.Tensor, convolved: bool = False) -> torch.Tensor:
        return F.relu(self.bn(x if convolved else self.conv(x)))


class SegFormerHead(nn.Module):
    """Project c1..c4 to E channels, resize c4..c2 to c1 (bilinear, align_corners=False), concatenate
    ``[c4, c3, c2, c1]``, ``linear_fuse`` (1×1 conv without bias, BN, ReLU), ``linear_pred`` (1×1).

    With ``folded`` (the default) it runs without the 4E-channel concatenation at stride 4: ``linear_fuse``'s
    conv is linear per pixel and the bilinear resize is linear with weights summing to 1, so each level's
    slice of the fuse conv is composed with its projection and applied on the level's own grid; the four
    E-channel results are resized and summed. Same function (float rounding aside), about half of
    SegFormer-B0's multiply-adds at 512×512 saved. The official modules are still called (``linear_c{i}``
    on the stage maps, ``linear_fuse`` producing the fused map). ``folded = False`` runs the official
    formulation (what :func:`~..cost.count_cost` counts).
    """

    folded = True

    def __init__(self, in_channels: Sequence[int], width: int, num_classes: int) -> None:
        super().__init__()
        for i, ch in enumerate(in_channels, start=1):
            setattr(self, f"linear_c{i}", LinearProjection(ch, width))
        self.linear_fuse = FuseConv(len(in_channels) * width, width)
        self.linear_pred = nn.Conv2d(width, num_classes, 1)
        # Created by the mmseg base class, unused in the forward, present in every checkpoint.
        self.conv_seg = nn.Conv2d(UNUSED_CONV_SEG_CHANNELS, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[2:]
        if not self.folded:
            levels = [getattr(self, f"linear_c{i}")(features[i - 1]) for i in range(len(features), 0, -1)]
            levels = [x if x.shape[2:] == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
                      for x in levels]
            return self.linear_pred(self.linear_fuse(torch.cat(levels, dim=1)))
        fuse = self.linear_fuse.conv.weight.flatten(1)  # [E, 4E], input blocks in the order c4, c3, c2, c1
        width = fuse.shape[0]
        fused = None
        for block, i in enumerate(range(len(features), 0, -1)):
            x = getattr(self, f"linear_c{i}")(features[i - 1], fuse[:, block * width:(block + 1) * width])
            if x.shape[2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            fused = x if fused is None else fused + x
        return self.linear_pred(self.linear_fuse(fused, convolved=True))


class SegFormer(SRASegmenter):
    """SegFormer-``variant``: logits ``[B, classes, ceil(H/4), ceil(W/4)]``."""

    def __init__(self, variant: str = "b0", num_classes: int = 150, name: str | None = None) -> None:
        if variant not in MIT_VARIANTS:
            raise ValueError(f"unknown SegFormer variant {variant!r}; choose from {sorted(MIT_VARIANTS)}")
        cfg = MIT_VARIANTS[variant]
        super().__init__(MixTransformer(cfg), SegFormerHead(cfg.widths, HEAD_WIDTH[variant], num_classes), None,
                         num_classes=num_classes, isr_scheme=SEGFORMER_ISR, name=name or f"segformer_{variant}")
        self.variant = variant

    def adapt_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """Convert a Hugging Face ``SegformerForSemanticSegmentation`` state_dict to official keys; others
        pass unchanged."""
        from .hf import convert_hf_segformer, is_hf_segformer

        return convert_hf_segformer(state_dict) if is_hf_segformer(state_dict) else state_dict


# ---- registration ----------------------------------------------------------------------------------
_SEGFORMER_README = "https://github.com/NVlabs/SegFormer#evaluation"
#: Parameters of each registered network (unused conv_seg included), for the catalogue's approximate sizes.
_PARAMETERS = {
    ("b0", "ade20k"): 3_772_044, ("b1", "ade20k"): 13_735_148, ("b2", "ade20k"): 27_481_324,
    ("b3", "ade20k"): 47_357_164, ("b4", "ade20k"): 64_127_724, ("b5", "ade20k"): 84_728_044,
    ("b0", "cityscapes"): 3_721_478, ("b1", "cityscapes"): 13_684_582, ("b2", "cityscapes"): 27_363_686,
    ("b3", "cityscapes"): 47_239_526, ("b4", "cityscapes"): 64_010_086, ("b5", "cityscapes"): 84_610_406,
}
_HF_NAMES = {"ade20k": "finetuned-ade-512-512", "cityscapes": "finetuned-cityscapes-1024-1024"}


def _spec(variant: str, dataset: str) -> NetworkSpec:
    name = f"segformer_{variant}_{dataset}"
    ade = dataset == "ade20k"
    classes = 150 if ade else 19
    side = 640 if (ade and variant == "b5") else 512
    hf = f"nvidia/segformer-{variant}-" + ("finetuned-ade-640-640" if side == 640 else _HF_NAMES[dataset])
    return NetworkSpec(
        name=name, task="segmentation", family="segformer", kwargs={"variant": variant, "num_classes": classes},
        description=f"SegFormer-{variant.upper()} (MiT + all-MLP head) semantic segmentation, {dataset} "
                    f"({classes} classes)",
        dataset=dataset, num_classes=classes,
        # Cityscapes: the whole 1024x2048 frame (the official evaluation slides 1024x1024 crops over it)
        input_size=(side, side) if ade else (1024, 2048),
        preprocessing=Preprocessing("mmseg", (2048, side), 32) if ade else Preprocessing("mmseg", (2048, 1024)),
        isr=SEGFORMER_ISR,
        # the official test modes (sra.md section 5): ADE20K whole-image, Cityscapes 1024x1024 windows
        inference=Inference.whole(side) if ade else Inference.slide(1024, 768),
        weights=(manual_weights(
            name, 4 * _PARAMETERS[(variant, dataset)],
            f"NVlabs/SegFormer README: Google Drive / OneDrive folder (by hand); or the Hugging Face file of "
            f"{hf} (.safetensors or pytorch_model.bin, converted on load)", _SEGFORMER_README),),
    )


@register_networks(*(_spec(v, d) for d in ("ade20k", "cityscapes") for v in MIT_VARIANTS))
def build_segformer(variant: str, num_classes: int, name: str | None = None) -> SegFormer:
    """SegFormer with MiT-``variant`` (b0…b5) and a ``num_classes`` head."""
    return SegFormer(variant=variant, num_classes=num_classes, name=name)
