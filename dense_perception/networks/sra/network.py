"""The segmentation network around an SRA backbone: backbone (+ neck) + decode head, with ISR.

The interface is EDAFormer's, so the serving layers treat every family alike: ``net(x)`` → raw logits
``[B, classes, h1, w1]`` on the stage-1 grid (stride 4), ``num_classes``, ``forward_features`` (the four
stage maps), and ISR through :class:`~..isr.ISRInterface` (``isr``, ``set_isr``, ``check_isr``, ``isr_scheme``).
"""
from __future__ import annotations

import torch
from torch import nn

from ..common import check_image_batch
from ..isr import ISRInterface, ISRScheme, ISRSetting
from .backbones import SRABackbone


class SRASegmenter(ISRInterface, nn.Module):
    """``decode_head(neck(backbone(x)))``; the official module names ``backbone``, ``neck``, ``decode_head``.

    Args:
        backbone: the SRA pyramid (its attention modules carry the ISR ratios).
        decode_head: maps the (neck's) four feature maps to logits.
        neck: optional (Semantic FPN), None for SegFormer.
        num_classes: output channels.
        isr_scheme: which ISR settings the backbone accepts (see :mod:`..isr`).
        name: the registry name.
    """

    def __init__(self, backbone: SRABackbone, decode_head: nn.Module, neck: nn.Module | None, *,
                 num_classes: int, isr_scheme: ISRScheme, name: str) -> None:
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be ≥ 1, got {num_classes}")
        self.name = name
        self.num_classes = int(num_classes)
        self.isr_scheme = isr_scheme
        self.backbone = backbone
        self.neck = neck
        self.decode_head = decode_head

    # ---- ISR ---------------------------------------------------------------------------------
    def _read_isr(self) -> ISRSetting | None:
        ratios = tuple(level[0].ratio for level in self.backbone.attention_levels())
        return None if 0 in ratios else ISRSetting(ratios, ())

    def _write_isr(self, setting: ISRSetting | None) -> None:
        ratios = setting.encoder if setting is not None else (0,) * 4  # 0: the adaptive grid (li only)
        for level, ratio in zip(self.backbone.attention_levels(), ratios):
            for attn in level:
                attn.ratio = ratio

    def check_input(self, height: int, width: int) -> None:
        """``ValueError`` before the forward for an input size this network cannot run with its ISR
        setting (naming the size it needs) or at all."""
        self.check_isr(height, width)
        self.backbone.check_input(height, width)

    # ---- forward -----------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four backbone stage maps (strides 4, 8, 16, 32)."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x)
        self.check_input(int(x.shape[2]), int(x.shape[3]))
        features = self.backbone(x)
        if self.neck is not None:
            features = self.neck(features)
        return self.decode_head(features).contiguous()  # channels-last inside, NCHW out
