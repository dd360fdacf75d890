"""mmseg's ``EncoderDecoder`` at inference, for the families without ISR (HRViT, ViT-CoMer).

A network is ``backbone`` → ``decode_head`` (plus an ``auxiliary_head`` that only training runs; its
weights are in every UperNet checkpoint, so it is kept for strict loading). ``net(x)`` returns the
raw logits at the head's stride, before any resize, like EDAFormer's: the serving layers resize.
"""
from __future__ import annotations

import torch
from torch import nn

from .common import check_image_batch
from .isr import WithoutISR


class EncoderDecoderSegmentor(WithoutISR, nn.Module):
    """Backbone + decode head (+ unused auxiliary head), with the input-size rule checked first.

    Subclasses set :attr:`attention_type` (for the no-ISR error) and override
    :meth:`input_size_problem` with their size rule.
    """

    #: Stride of the logits relative to the input.
    output_stride: int = 4

    def __init__(self, name: str, num_classes: int, backbone: nn.Module, decode_head: nn.Module,
                 auxiliary_head: nn.Module | None = None) -> None:
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be ≥ 1, got {num_classes}")
        self.name = name
        self.num_classes = int(num_classes)
        self.backbone = backbone
        self.decode_head = decode_head
        self.auxiliary_head = auxiliary_head

    def input_size_problem(self, height: int, width: int) -> str | None:
        """Why a ``height``×``width`` input cannot run, or None (every size runs by default)."""
        return None

    def check_input(self, x: torch.Tensor) -> None:
        """``TypeError``/``ValueError`` for anything but a float ``[B, 3, H, W]`` batch of a size the
        network accepts -- raised before any computation."""
        check_image_batch(x)
        problem = self.input_size_problem(int(x.shape[2]), int(x.shape[3]))
        if problem:
            raise ValueError(problem)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's four maps (finest first)."""
        self.check_input(x)
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_head(self.forward_features(x)).contiguous()
