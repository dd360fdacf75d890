"""PyTorch's bilinear resize (``align_corners=False``) reproduced bit for bit on gathered samples.

The official segmentation tail resizes logits with ``F.interpolate(mode="bilinear")``. Where two classes
tie or nearly tie, its argmax depends on the float32 rounding of that kernel, so the labels computed
without the full tensor (:mod:`.official_labels`) evaluate the surviving classes with the same
operations in the same order. What the kernel does (``aten/src/ATen/native/cpu/UpSampleKernel.cpp``,
``UpSample.h``; the CUDA kernel computes one output per thread the same way):

- Per axis, output ``o`` reads inputs ``i0 = floor(s)`` and ``i1 = min(i0 + 1, n_in - 1)`` with weights
  ``l0 = 1 - l1`` and ``l1 = s - i0``, where ``s = max(scale * (o + 0.5) - 0.5, 0)`` in float32 and
  ``scale = n_in / n_out`` (float32). Equal sizes read ``o`` with weights ``1, 0``.
- The *generic* kernel combines a row's two samples, ``t = x[i0, j0] * w0 + x[i0, j1] * w1``, then the
  two rows, ``t0 * l0 + t1 * l1``.
- The CPU's *channel-vectorised* kernel (used when the output's height + width is at most 128, for a
  channels-last input with more than 3 channels, and with one thread for 3 channels) multiplies the
  weights first (``w00 = l0 * w0`` ...) and sums the four products: classes in whole SIMD vectors as
  ``p00 + (p01 + (p10 + p11))``, the remaining ``K % width`` classes in scalar code as
  ``((p00 + p01) + p10) + p11``.

How the compiler rounded each ``a * b + c * d`` (one fused multiply-add, and which product goes in
it), whether the source coordinate used one, and the SIMD width are properties of the build and the
CPU, so :func:`kernel_arithmetic` finds them by resizing a probe tensor and comparing with each
candidate. Fused multiply-adds are evaluated in float64 and rounded once to float32: exact for the
product, and the sum rounds twice only when it lands exactly between two float32 values.
"""
from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

#: Output height + width up to which the CPU kernel uses the channel-vectorised path.
CHANNEL_VECTORISED_MAX_OUTPUT = 128
#: SIMD widths (float32 lanes) the probe tries, most common first.
VECTOR_WIDTHS = (16, 8, 4, 32)


class SumRule(str, enum.Enum):
    """How the kernel's ``a * b + c * d`` is rounded."""

    FIRST = "first"  # fma(a, b, c * d)
    SECOND = "second"  # fma(c, d, a * b)
    SEPARATE = "separate"  # (a * b) + (c * d), each rounded


@dataclass(frozen=True)
class KernelArithmetic:
    """The float32 evaluation of ``F.interpolate(mode="bilinear", align_corners=False)`` on a device.

    ``vector_width`` is 0 where the device has no channel-vectorised kernel (CUDA); ``exact`` says
    whether the probe found these rules reproducing the kernel bit for bit (otherwise they are the
    closest candidate and results can differ from the kernel's by rounding)."""

    source_fused: bool
    generic: SumRule
    vector_width: int = 0
    vector_pair: SumRule = SumRule.SEPARATE
    tail_pair: SumRule = SumRule.SEPARATE
    exact: bool = True


#: Plain float32 arithmetic everywhere (for values that need not match the kernel's rounding).
ROUNDED_SEPARATELY = KernelArithmetic(source_fused=False, generic=SumRule.SEPARATE)


@dataclass(frozen=True)
class Taps:
    """One axis of one resize: output ``o`` is ``x[index0[o]] * weight0[o] + x[index1[o]] * weight1[o]``
    (int64 and float32 arrays of the output length)."""

    index0: np.ndarray
    index1: np.ndarray
    weight0: np.ndarray
    weight1: np.ndarray


def taps(n_in: int, n_out: int, source_fused: bool) -> Taps:
    """The kernel's source indices and weights along one axis from ``n_in`` to ``n_out`` samples."""
    outputs = np.arange(n_out)
    if n_in == n_out:
        return Taps(outputs, outputs.copy(), np.ones(n_out, np.float32), np.zeros(n_out, np.float32))
    scale = np.float32(n_in) / np.float32(n_out)
    centre = outputs.astype(np.float32) + np.float32(0.5)
    if source_fused:
        source = (np.float64(scale) * centre.astype(np.float64) - 0.5).astype(np.float32)
    else:
        source = (scale * centre).astype(np.float32) - np.float32(0.5)
    source = np.maximum(source, np.float32(0))
    index0 = source.astype(np.int64)
    index1 = index0 + (index0 < n_in - 1)
    weight1 = np.clip(source - index0.astype(np.float32), 0, 1).astype(np.float32)
    return Taps(index0, index1, (np.float32(1) - weight1).astype(np.float32), weight1)


def channel_vectorised(channels: int, input_channels_last: bool, output_size: tuple[int, int],
                       device: torch.device) -> bool:
    """Whether the CPU kernel takes its channel-vectorised path for this resize."""
    if device.type != "cpu":
        return False
    return ((input_channels_last and channels > 3) or sum(output_size) <= CHANNEL_VECTORISED_MAX_OUTPUT
            or (torch.get_num_threads() == 1 and channels == 3))


def resized_channels_last(logits: torch.Tensor) -> bool:
    """Whether ``F.interpolate`` returns a channels-last tensor for ``logits`` (it keeps the input's
    suggested memory format: channels-last where the strides are channels-last and not also plain
    contiguous, as they both are for a 1x1 map)."""
    return logits.is_contiguous(memory_format=torch.channels_last) and not logits.is_contiguous()


def _fused(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``a * b + c`` rounded once to float32."""
    return torch.addcmul(c.double(), a.double(), b.double()).float()


def _pair(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor, rule: SumRule) -> torch.Tensor:
    if rule is SumRule.FIRST:
        return _fused(a, b, c * d)
    if rule is SumRule.SECOND:
        return _fused(c, d, a * b)
    return a * b + c * d


def _add_product(total: torch.Tensor, a: torch.Tensor, b: torch.Tensor, fused: bool) -> torch.Tensor:
    return _fused(a, b, total) if fused else total + a * b


@dataclass(frozen=True)
class GatheredTaps:
    """Taps of one axis as tensors on the values' device: indices into the input axis and weights,
    ``[M]`` (shared by every item) or ``[P, M]`` (one row per item)."""

    index0: torch.Tensor
    index1: torch.Tensor
    weight0: torch.Tensor
    weight1: torch.Tensor

    @staticmethod
    def of(axis: Taps, device: torch.device) -> GatheredTaps:
        return GatheredTaps(*(torch.from_numpy(np.ascontiguousarray(a)).to(device)
                              for a in (axis.index0, axis.index1, axis.weight0, axis.weight1)))


def _pick(values: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """``values`` ``[P, R, C]`` at ``index`` along ``dim`` (1 or 2): shared ``[M]`` or per item ``[P, M]``."""
    if index.dim() == 1:
        return values.index_select(dim, index)
    shape = list(values.shape)
    shape[dim] = index.shape[1]
    return values.gather(dim, (index[:, :, None] if dim == 1 else index[:, None, :]).expand(shape))


def _weight(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """A weight ``[M]`` or ``[P, M]`` shaped to broadcast along ``dim`` of ``[P, R, C]``."""
    if weight.dim() == 1:
        return weight[:, None] if dim == 1 else weight
    return weight[:, :, None] if dim == 1 else weight[:, None, :]


def resize_samples(values: torch.Tensor, rows: GatheredTaps, cols: GatheredTaps, arithmetic: KernelArithmetic,
                   vectorised: bool = False, tail: torch.Tensor | None = None) -> torch.Tensor:
    """The kernel's outputs ``[P, Mr, Mc]`` from float32 input samples ``values`` ``[P, R, C]``, where
    output ``(m, n)`` of item ``p`` reads the rows and columns its taps name. ``vectorised`` selects the
    channel-vectorised CPU path; ``tail`` (bool ``[P]``) marks items whose channel is in its scalar tail.
    """
    if not vectorised:
        rule = arithmetic.generic
        across = _pair(_pick(values, 2, cols.index0), _weight(cols.weight0, 2),
                       _pick(values, 2, cols.index1), _weight(cols.weight1, 2), rule)  # [P, R, Mc]
        return _pair(_pick(across, 1, rows.index0), _weight(rows.weight0, 1),
                     _pick(across, 1, rows.index1), _weight(rows.weight1, 1), rule)
    top, bottom = _pick(values, 1, rows.index0), _pick(values, 1, rows.index1)
    samples = (_pick(top, 2, cols.index0), _pick(top, 2, cols.index1),
               _pick(bottom, 2, cols.index0), _pick(bottom, 2, cols.index1))
    row_weights = (_weight(rows.weight0, 1), _weight(rows.weight1, 1))
    col_weights = (_weight(cols.weight0, 2), _weight(cols.weight1, 2))
    weights = [row * col for row in row_weights for col in col_weights]  # w00, w01, w10, w11
    vector = _pair(samples[2], weights[2], samples[3], weights[3], arithmetic.vector_pair)
    fused = arithmetic.vector_pair is not SumRule.SEPARATE
    vector = _add_product(vector, samples[1], weights[1], fused)
    vector = _add_product(vector, samples[0], weights[0], fused)
    if tail is None or not bool(tail.any()):
        return vector
    scalar = _pair(samples[0], weights[0], samples[1], weights[1], arithmetic.tail_pair)
    fused = arithmetic.tail_pair is not SumRule.SEPARATE
    scalar = _add_product(scalar, samples[2], weights[2], fused)
    scalar = _add_product(scalar, samples[3], weights[3], fused)
    return torch.where(tail[:, None, None], scalar, vector)


def tail_classes(classes: int, arithmetic: KernelArithmetic) -> torch.Tensor:
    """Bool ``[classes]``: the classes the channel-vectorised kernel handles in its scalar tail."""
    width = arithmetic.vector_width
    first_tail = classes - classes % width if width else classes
    return torch.arange(classes) >= first_tail


def emulate_resize(maps: torch.Tensor, size: tuple[int, int], arithmetic: KernelArithmetic,
                   vectorised: bool) -> torch.Tensor:
    """``F.interpolate`` of float32 ``maps`` ``[K, h, w]`` to ``size`` as ``arithmetic`` describes it
    (the whole maps: for probes and tests)."""
    classes, height, width = maps.shape
    rows = GatheredTaps.of(taps(height, size[0], arithmetic.source_fused), maps.device)
    cols = GatheredTaps.of(taps(width, size[1], arithmetic.source_fused), maps.device)
    tail = tail_classes(classes, arithmetic).to(maps.device) if vectorised else None
    return resize_samples(maps, rows, cols, arithmetic, vectorised, tail)


#: Probe shapes: 31 classes (distinct first tail class for every candidate width), two output sizes, one
#: on each side of the channel-vectorised limit.
_PROBE = (31, 9, 13)
_PROBE_GENERIC_SIZE = (97, 41)
_PROBE_VECTORISED_SIZE = (37, 45)


@functools.lru_cache(maxsize=8)
def kernel_arithmetic(device: torch.device | str = "cpu") -> KernelArithmetic:
    """The rules of :class:`KernelArithmetic` that reproduce ``F.interpolate`` on ``device``, found by
    resizing a fixed random probe and comparing with every candidate (a few milliseconds, once per
    device and process)."""
    device = torch.device(device)
    probe = torch.from_numpy(np.random.default_rng(19).standard_normal(_PROBE).astype(np.float32) * 5).to(device)

    def mismatches(size: tuple[int, int], rules: KernelArithmetic, vectorised: bool) -> torch.Tensor:
        ours = emulate_resize(probe, size, rules, vectorised)
        theirs = F.interpolate(probe[None], size=size, mode="bilinear", align_corners=False)[0]
        return (ours != theirs).flatten(1).sum(1)  # per class

    generic = [KernelArithmetic(source, rule) for source in (True, False) for rule in SumRule]
    counts = [int(mismatches(_PROBE_GENERIC_SIZE, rules, False).sum()) for rules in generic]
    best = generic[int(np.argmin(counts))]
    exact = min(counts) == 0
    if device.type != "cpu":
        return KernelArithmetic(best.source_fused, best.generic, exact=exact)
    # the channel-vectorised path: which classes take the vector and which the tail formula
    vector_fit = {rule: mismatches(_PROBE_VECTORISED_SIZE, KernelArithmetic(  # width 1: no tail
        best.source_fused, best.generic, 1, vector_pair=rule), True) for rule in SumRule}
    tail_fit = {rule: mismatches(_PROBE_VECTORISED_SIZE, KernelArithmetic(  # wider than K: all tail
        best.source_fused, best.generic, 1 << 30, tail_pair=rule), True) for rule in SumRule}
    options = []
    for width in VECTOR_WIDTHS:
        in_tail = tail_classes(_PROBE[0], KernelArithmetic(True, SumRule.FIRST, width)).to(device)
        for vector_rule in SumRule:
            for tail_rule in SumRule:
                wrong = int(torch.where(in_tail, tail_fit[tail_rule], vector_fit[vector_rule]).sum())
                options.append((wrong, width, vector_rule, tail_rule))
    wrong, width, vector_rule, tail_rule = min(options, key=lambda option: option[0])
    return KernelArithmetic(best.source_fused, best.generic, width, vector_rule, tail_rule,
                            exact=exact and wrong == 0)
