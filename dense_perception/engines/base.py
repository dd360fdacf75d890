"""The Engine protocol: one network on one device at one precision, behind four operations.

Every backend (torch, onnxruntime, tensorrt) implements it, so pre- and post-processing exist once:
an engine takes the pre-processed float32 batch ``[B, 3, H, W]`` as a torch tensor and returns the
network's raw output as a torch tensor on the same device (logits ``[B, K, h, w]`` for EDAFormer,
``[B, H, W]`` for DPT). Backends without torch tensors (onnxruntime) wrap NumPy arrays zero-copy.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from ..networks.isr import ISRSetting


class EngineError(RuntimeError):
    """An engine could not be created or run (missing library, bad model file, wrong setting)."""


#: The precisions each backend runs. torch's fp16/bf16 need CUDA (autocast); ONNX Runtime's fp16 graph
#: is for its CUDA/TensorRT providers and its int8 graph is statically quantised for the CPU
#: (:mod:`.quantize`); TensorRT builds fp32 or fp16 engines.
BACKEND_PRECISIONS: dict[str, tuple[str, ...]] = {
    "torch": ("fp32", "fp16", "bf16"),
    "onnxruntime": ("fp32", "fp16", "int8"),
    "tensorrt": ("fp32", "fp16"),
}
#: Every precision some backend runs, for option and parameter choices.
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16", "int8")


def check_precision(backend: str, precision: str) -> None:
    """``EngineError`` naming the backends that run ``precision`` when ``backend`` does not."""
    if precision in BACKEND_PRECISIONS.get(backend, ()):
        return
    if precision not in PRECISIONS:
        raise EngineError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    runs_it = [name for name, offered in BACKEND_PRECISIONS.items() if precision in offered]
    raise EngineError(f"the {backend} backend does not run {precision} (it runs "
                      f"{', '.join(BACKEND_PRECISIONS.get(backend, ()))}); {precision} runs on "
                      f"{' or '.join(runs_it)}")


@runtime_checkable
class Engine(Protocol):
    """What the pipeline needs from a backend."""

    #: "torch", "onnxruntime" or "tensorrt"
    backend: str
    #: registry name of the network
    network: str
    #: torch device where inputs are expected and outputs are returned
    device: torch.device

    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw network output for a pre-processed float32 batch (no gradients)."""
        ...

    def set_isr(self, setting: ISRSetting) -> None:
        """Apply an EDAFormer ISR setting from the next ``infer`` on; ``ValueError`` when impossible."""
        ...

    @property
    def isr(self) -> ISRSetting | None:
        """The ISR setting in use (None for networks without ISR)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Backend, network, device, precision, fixed input size (if any) and ISR, for logs and bench."""
        ...
