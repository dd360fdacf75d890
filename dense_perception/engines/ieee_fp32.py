"""IEEE float32 on CUDA for the duration of a forward: no TF32 in convolutions or matrix products.

PyTorch lets cuDNN convolutions use TF32 by default (10-bit mantissa inputs, about 1e-3 relative error),
while its float32 matrix products default to IEEE. An fp32 engine means fp32 -- the TensorRT engine
clears TF32 when it builds fp32 engines for the same reason -- so the torch engine runs its fp32 CUDA
forwards inside :func:`ieee_fp32`; fp16/bf16 under autocast are unaffected (their convolutions and
products are not float32).

The switches are process-wide torch settings (``torch.backends.cudnn.conv.fp32_precision`` and
``torch.backends.cuda.matmul.fp32_precision``, or the older ``allow_tf32`` flags where torch lacks them).
They are counted, not just set and restored: the first forward to enter sets them, the last to leave
restores what was there, so forwards of several engines overlapping in threads all run in IEEE float32
and the caller's own setting comes back afterwards.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator

import torch


def _switches() -> list[tuple[Any, str, Any]]:
    """``(owner, attribute, IEEE value)`` for the settings that let CUDA float32 work use TF32."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    matmul = torch.backends.cuda.matmul
    if hasattr(conv, "fp32_precision") and hasattr(matmul, "fp32_precision"):  # torch >= 2.9
        return [(conv, "fp32_precision", "ieee"), (matmul, "fp32_precision", "ieee")]
    return [(torch.backends.cudnn, "allow_tf32", False), (matmul, "allow_tf32", False)]


class _Float32Scope:
    """The counted switch behind :func:`ieee_fp32` (one per process, as the torch settings are)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: list[tuple[Any, str, Any]] = []

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                switches = _switches()
                self._saved = [(owner, name, getattr(owner, name)) for owner, name, _ in switches]
                for owner, name, value in switches:
                    setattr(owner, name, value)
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    for owner, name, value in self._saved:
                        setattr(owner, name, value)


#: ``with ieee_fp32():`` -- float32 convolutions and matrix products on CUDA without TF32 in the block.
ieee_fp32 = _Float32Scope()
