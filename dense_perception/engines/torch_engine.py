"""The PyTorch engine: eager (optionally compiled) network on CPU or CUDA.

Precision on CUDA: ``fp16``/``bf16`` run under ``torch.autocast``, whose op policy keeps LayerNorm,
GroupNorm and softmax in fp32 (transformer LayerNorms overflow in fp16) while convolutions, linear layers
and attention run in the reduced type; ``fp32`` is IEEE float32, without the TF32 that PyTorch allows
cuDNN convolutions by default (:mod:`.ieee_fp32`); the model is ``channels_last``. On CPU only ``fp32`` is offered
(``bf16`` autocast on CPU is slower than fp32 on most CPUs without AMX). On the CPU the engine tunes
glibc's malloc to keep freed activation memory between frames (:mod:`.host_memory`) and runs the
linear layers with oneDNN's kernel (:mod:`.onednn`).
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from ..networks.isr import ISRSetting
from .base import EngineError, check_precision
from .host_memory import keep_freed_memory
from .ieee_fp32 import ieee_fp32
from .onednn import use_onednn_linear

#: Autocast type per precision (see ``base.BACKEND_PRECISIONS``).
AUTOCAST_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchEngine:
    """One network on one torch device; ISR switches instantly (no weight depends on it).

    The engine works on ``net`` itself: it puts it in eval mode on the device and, on the CPU, swaps its
    narrow linear layers for oneDNN ones sharing the same parameters (:func:`.onednn.use_onednn_linear`)."""

    backend = "torch"

    def __init__(self, net: nn.Module, device: str | torch.device = "cpu", precision: str = "fp32",
                 compile: bool = False) -> None:
        self.device = torch.device(device)
        check_precision(self.backend, precision)
        if precision != "fp32" and self.device.type != "cuda":
            raise EngineError(f"precision {precision} needs a CUDA device; {self.device} runs fp32 only")
        self.precision = precision
        self.network = getattr(net, "name", type(net).__name__)
        self.host_memory_tuned = self.device.type == "cpu" and keep_freed_memory()
        self.net = net.eval().to(self.device)
        self.onednn_linears = use_onednn_linear(self.net) if self.device.type == "cpu" else 0
        if self.device.type == "cuda":
            self.net = self.net.to(memory_format=torch.channels_last)
        self.compiled = bool(compile)
        # On CUDA "reduce-overhead" also captures CUDA graphs (one per input shape and ISR setting).
        mode = "reduce-overhead" if self.device.type == "cuda" else None
        self._forward = torch.compile(self.net, dynamic=False, mode=mode) if compile else self.net

    def _precision(self) -> contextlib.AbstractContextManager:
        """Autocast for fp16/bf16; IEEE float32 (no TF32) for fp32 on CUDA."""
        if self.precision != "fp32":
            return torch.autocast(device_type=self.device.type, dtype=AUTOCAST_DTYPES[self.precision])
        return ieee_fp32() if self.device.type == "cuda" else contextlib.nullcontext()

    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._precision():
            return self._forward(batch)

    @property
    def isr(self) -> ISRSetting | None:
        return getattr(self.net, "isr", None)

    def check_isr(self, setting: ISRSetting, height: int, width: int) -> None:
        """``ValueError`` when ``setting`` cannot run at this network input size."""
        if not hasattr(self.net, "check_isr"):
            raise ValueError(f"{self.network} has no inference spatial reduction")
        self.net.check_isr(height, width, setting)

    def set_isr(self, setting: ISRSetting) -> None:
        if not hasattr(self.net, "set_isr"):
            raise ValueError(f"{self.network} has no inference spatial reduction")
        self.net.set_isr(setting)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"backend": self.backend, "network": self.network, "device": str(self.device),
                                "precision": self.precision, "compiled": self.compiled, "input_size": None,
                                "host_memory_tuned": self.host_memory_tuned, "onednn_linears": self.onednn_linears}
        if self.isr is not None:
            info["isr"] = str(self.isr)
        return info
