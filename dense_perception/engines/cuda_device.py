"""The CUDA device a TensorRT engine belongs to, as the engine uses it.

TensorRT works on the *current* CUDA device of the calling thread: a builder builds for it, a runtime
deserializes onto it, an execution context is created, enqueues and is released there. :class:`CudaDevice`
names one device and gives the TensorRT backend what it needs around those calls: entering the device
(``torch.cuda.device(index)``), a stream of the engine's own, the caller's current stream, the torch
device its tensors live on, and the GPU's name and compute capability (engines are specific to them).

The TensorRT tests give the backend a stand-in with the same attributes that runs on the CPU
(``test/fake_tensorrt.py``); this module only ever accepts CUDA devices.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ContextManager, Protocol

import torch

from .base import EngineError


@dataclass(frozen=True)
class GpuInfo:
    """The GPU an engine is built for (engines are specific to the model and compute capability)."""

    name: str
    compute_capability: str  # "8.7"


class Stream(Protocol):
    """What the TensorRT backend uses of a ``torch.cuda.Stream``."""

    @property
    def cuda_stream(self) -> int: ...

    def wait_stream(self, stream: Any) -> None: ...

    def synchronize(self) -> None: ...


class Device(Protocol):
    """What the TensorRT backend uses of a device (:class:`CudaDevice`, or the tests' stand-in)."""

    #: CUDA ordinal
    index: int
    #: where input and output tensors are placed
    torch_device: torch.device

    def scope(self) -> ContextManager[Any]: ...

    def new_stream(self) -> Stream: ...

    def current_stream(self) -> Stream: ...

    def gpu(self) -> GpuInfo: ...


class CudaDevice:
    """One CUDA device; ``cuda`` without an index is the current device at construction.

    ``EngineError`` when the device is not CUDA, torch has no CUDA, or the ordinal does not exist.
    """

    def __init__(self, device: str | int | torch.device = "cuda") -> None:
        requested = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
        if requested.type != "cuda":
            raise EngineError(f"the tensorrt backend needs a CUDA device, got {requested}")
        if not torch.cuda.is_available():
            raise EngineError(f"the tensorrt backend needs a CUDA device; torch {torch.__version__} sees none")
        index = torch.cuda.current_device() if requested.index is None else requested.index
        count = torch.cuda.device_count()
        if not 0 <= index < count:
            raise EngineError(f"{requested}: no such device ({count} CUDA device(s) present)")
        self.index = index
        self.torch_device = torch.device("cuda", index)

    def scope(self) -> ContextManager[Any]:
        """Make this the current device of the calling thread for the block."""
        return torch.cuda.device(self.index)

    def new_stream(self) -> torch.cuda.Stream:
        """A new (non-default) stream on this device."""
        return torch.cuda.Stream(self.torch_device)

    def current_stream(self) -> torch.cuda.Stream:
        """The calling thread's current torch stream on this device (where its tensors were produced)."""
        return torch.cuda.current_stream(self.torch_device)

    def gpu(self) -> GpuInfo:
        major, minor = torch.cuda.get_device_capability(self.index)
        return GpuInfo(torch.cuda.get_device_name(self.index), f"{major}.{minor}")

    def __repr__(self) -> str:
        return f"CudaDevice({self.torch_device})"


def as_device(device: str | int | torch.device | Device) -> Device:
    """``device`` as a :class:`Device`: names, ordinals and ``torch.device`` become a :class:`CudaDevice`;
    an object that already is a device (the tests' stand-in) is returned as it is."""
    if isinstance(device, (str, int, torch.device)):
        return CudaDevice(device)
    return device
