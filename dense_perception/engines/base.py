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
