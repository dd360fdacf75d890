"""What the raw output of a depth network means, and the one conversion to metres.

Every DPT network returns the head output after its final ReLU (``shared/design/dpt.md`` section 1):
- MiDaS checkpoints: **relative inverse depth** (disparity-like, larger = nearer, unknown scale and
  shift). There is no conversion to metres without a per-scene fit (on inverse depth).
- NYU / KITTI checkpoints: inverse depth in the checkpoint's own units;
  ``metres = 1 / max(scale·y + shift, 1e-8)`` with the constants below (the official ``invert`` step).

Order matters: :func:`to_metres` must run on the output **at network resolution, before** the
bicubic resize to the image size — as the official script does; bicubic and ``1/x`` do not commute.
Pure tensor/array arithmetic, no I/O.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, TypeVar

import numpy as np
import torch

#: Lower clamp of ``scale·y + shift`` before inverting (official: ``d[d < 1e-8] = 1e-8``).
MIN_INVERSE_DEPTH = 1e-8

ArrayLike = TypeVar("ArrayLike", torch.Tensor, np.ndarray)


@dataclass(frozen=True)
class DepthOutput:
    """Meaning of a depth network's raw output.

    Attributes:
        kind: ``"relative_inverse"`` (MiDaS) or ``"metric"`` (inverse depth convertible to metres).
        scale, shift: the official affine map to inverse metres (``1``/``0`` for relative outputs).
        description: one line for users and ``info`` output.
        fit: the scale and shift come from a per-scene fit (:meth:`fitted`), not from the checkpoint.
    """

    kind: str
    scale: float
    shift: float
    description: str = ""
    fit: bool = False  # True: the scale and shift are a user's per-scene fit, not the checkpoint's

    @property
    def is_metric(self) -> bool:
        return self.kind == "metric"

    def fitted(self, scale: float, shift: float) -> "DepthOutput":
        """This relative output turned metric by a per-scene affine fit on inverse depth
        (``metres = 1 / max(scale·y + shift, 1e-8)``, the same conversion as the metric checkpoints');
        ``ValueError`` for an output that is metric already or a fit that is not finite."""
        if self.is_metric:
            raise ValueError(f"{self.kind} output already has a metric scale; a fit is for relative outputs")
        if not (math.isfinite(scale) and math.isfinite(shift)):
            raise ValueError(f"depth scale and shift must be finite, got {scale} and {shift}")
        if scale <= 0:
            raise ValueError(f"depth scale must be positive (larger inverse depth = nearer), got {scale}")
        return DepthOutput("metric", float(scale), float(shift),
                           f"{self.description}, turned into metres by the fit "
                           f"1 / max({scale:g}·y + {shift:g}, 1e-8)", fit=True)

    def to_metres(self, raw: ArrayLike) -> ArrayLike:
        """Metres from the raw output at network resolution; ``ValueError`` for relative outputs."""
        if not self.is_metric:
            raise ValueError(
                f"{self.kind} output has no metric scale; fit scale and shift per scene on inverse depth"
            )
        return to_metres(raw, self.scale, self.shift)


def to_metres(raw: ArrayLike, scale: float, shift: float) -> ArrayLike:
    """``1 / max(scale·raw + shift, 1e-8)`` elementwise, for torch tensors or NumPy arrays.

    Apply at network resolution, before any resize to the image size (module docstring).
    The result keeps the input's type, dtype and device.
    """
    if isinstance(raw, torch.Tensor):
        return 1.0 / torch.clamp(raw * scale + shift, min=MIN_INVERSE_DEPTH)
    array = np.asarray(raw)
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float64)
    inverse = np.maximum(array * array.dtype.type(scale) + array.dtype.type(shift), MIN_INVERSE_DEPTH)
    return (1.0 / inverse).astype(array.dtype, copy=False)


MIDAS = DepthOutput(
    "relative_inverse", 1.0, 0.0,
    "MiDaS v3 relative inverse depth (larger = nearer; unknown scale and shift)",
)
NYU = DepthOutput(
    "metric", 0.000305, 0.1378,
    "NYU Depth v2 inverse depth; metres = 1 / max(0.000305·y + 0.1378, 1e-8)",
)
KITTI = DepthOutput(
    "metric", 0.00006016, 0.00579,
    "KITTI inverse depth; metres = 1 / max(0.00006016·y + 0.00579, 1e-8)",
)

#: Output meaning per training dataset of the DPT checkpoints.
DEPTH_OUTPUTS: Mapping[str, DepthOutput] = MappingProxyType({"midas": MIDAS, "nyu": NYU, "kitti": KITTI})
