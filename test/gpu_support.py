"""Markers for tests that need a CUDA GPU or TensorRT, each skipped with a reason naming what is missing.

``pytest -m "cuda or tensorrt"`` selects them (``scripts/gpu_check.sh`` runs them on a GPU machine). Use
``pytestmark = cuda_marks()`` in a module, ``@with_marks(tensorrt_marks(gpus=2))`` on a test, or
``pytest.param(..., marks=cuda_marks())``; the checks run at collection and never fail there.
"""
from __future__ import annotations

import pytest
import torch

#: fp16 results against float32 references, relative to max(1, max|reference|) like the golden cases'
#: tolerances: what fp16 can catch is overflow and gross mistakes (fp32 catches the eps-level ones).
#: Estimated with CPU autocast fp16 on the CI machine, on the golden cases: EDAFormer-T logits 5e-4 and
#: stage outputs up to 2.5e-3; DPT-Hybrid pre_relu 6e-4, layer1..4 2.3e-3 / 9.1e-3 / 4.9e-2 / 5.2e-2 (the
#: hybrid's ResNet stem in fp16; the same at 192x192); DPT-Large (at 192x192) pre_relu 9e-5, layer1..4
#: about 1e-3. About 3x headroom for CUDA's and TensorRT's kernels; the CUDA figures are in
#: bench/RESULTS.md (the section scripts/gpu_check.sh writes).
FP16_BOUND = 1e-2
FP16_BOUND_DPT_LAYERS = 1.5e-1


def cuda_missing() -> str | None:
    """Why CUDA tests cannot run here, or None."""
    if torch.version.cuda is None:
        return f"needs a CUDA GPU: torch {torch.__version__} is a CPU-only build"
    if not torch.cuda.is_available():
        return f"needs a CUDA GPU: torch {torch.__version__} (CUDA {torch.version.cuda}) sees none"
    return None


def gpus_missing(count: int) -> str | None:
    """Why a test needing ``count`` CUDA GPUs cannot run here, or None."""
    missing = cuda_missing()
    if missing is None and torch.cuda.device_count() < count:
        missing = f"needs {count} CUDA GPUs: {torch.cuda.device_count()} present"
    return missing


def tensorrt_missing() -> str | None:
    """Why TensorRT tests cannot run here, or None (TensorRT needs CUDA too)."""
    from dense_perception.engines.tensorrt_engine import tensorrt_available

    if not tensorrt_available():
        return ("needs NVIDIA TensorRT: the tensorrt module is not installed (pip install tensorrt-cu12 or "
                "tensorrt-cu13, matching torch's CUDA)")
    return cuda_missing()


def _marks(marker: pytest.MarkDecorator, reason: str | None) -> list[pytest.MarkDecorator]:
    return [marker, pytest.mark.skipif(reason is not None, reason=reason or "")]


def cuda_marks(gpus: int = 1) -> list[pytest.MarkDecorator]:
    """The ``cuda`` marker, and a skip where fewer than ``gpus`` CUDA GPUs are present."""
    return _marks(pytest.mark.cuda, gpus_missing(gpus))


def tensorrt_marks(gpus: int = 1) -> list[pytest.MarkDecorator]:
    """The ``tensorrt`` marker, and a skip where TensorRT or ``gpus`` CUDA GPUs are missing."""
    return _marks(pytest.mark.tensorrt, tensorrt_missing() or gpus_missing(gpus))


def with_marks(marks: list[pytest.MarkDecorator]):  # noqa: ANN201 - a decorator
    """``@with_marks(tensorrt_marks())``: put a list of marks on one test."""
    def decorate(test):  # noqa: ANN001, ANN202
        for mark in reversed(marks):
            test = mark(test)
        return test
    return decorate
