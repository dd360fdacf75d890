"""PyTorch's bilinear resize reproduced bit for bit (``pipeline/bilinear_kernel.py``): taps, the probed rounding
rules, and the emulation of both CPU paths against ``F.interpolate`` itself."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dense_perception.pipeline.bilinear_kernel import (
    CHANNEL_VECTORISED_MAX_OUTPUT, KernelArithmetic, SumRule, channel_vectorised, emulate_resize,
    kernel_arithmetic, resized_channels_last, tail_classes, taps)


@pytest.mark.parametrize(("n_in", "n_out"), [(64, 512), (512, 480), (88, 640), (704, 4000), (7, 3), (1, 5),
                                              (5, 1), (13, 13), (10, 37), (37, 10)])
def test_taps_are_the_kernels_own(n_in: int, n_out: int) -> None:
    """Each output's two taps, read back from the kernel with unit inputs (where the two taps read the same
    input, as at the clamped edges, the kernel shows only their sum)."""
    axis = taps(n_in, n_out, kernel_arithmetic().source_fused)
    dense = np.zeros((n_out, n_in), dtype=np.float32)
    outputs = np.arange(n_out)
    dense[outputs, axis.index0] += axis.weight0
    dense[outputs, axis.index1] += axis.weight1
    identity = torch.eye(n_in)[None, :, :, None]  # channel j is the unit sample at input j
    kernel = F.interpolate(identity, size=(n_out, 1), mode="bilinear", align_corners=False)[0, :, :, 0].t()
    assert np.array_equal(dense, kernel.numpy())
    assert (axis.index1 - axis.index0 <= 1).all() and (axis.weight0 > 0).all()


def test_equal_sizes_copy_and_the_source_coordinate_is_clamped_at_zero() -> None:
    same = taps(9, 9, True)
    assert np.array_equal(same.index0, np.arange(9)) and (same.weight0 == 1).all() and (same.weight1 == 0).all()
    up = taps(4, 16, True)  # the first outputs' source coordinate is negative before the clamp
    assert up.index0[0] == 0 and up.weight0[0] == 1 and up.weight1[0] == 0


def test_the_probe_finds_rules_that_reproduce_this_kernel() -> None:
    arithmetic = kernel_arithmetic("cpu")
    assert arithmetic.exact, arithmetic
    assert arithmetic.vector_width in (4, 8, 16, 32)


@pytest.mark.parametrize("seed", range(4))
def test_emulated_resize_equals_f_interpolate_bit_for_bit(seed: int) -> None:
    """Both CPU paths (generic; channel-vectorised below 128 output rows + columns or for channels-last
    inputs, with its scalar tail), up and down, integer-valued maps (ties), 1x1 inputs."""
    rng = np.random.default_rng(seed)
    arithmetic = kernel_arithmetic("cpu")
    for _ in range(25):
        classes = int(rng.choice([1, 2, 3, 5, 19, 150, 171]))
        size_in = (int(rng.integers(1, 30)), int(rng.integers(1, 30)))
        size_out = (int(rng.integers(1, 160)), int(rng.integers(1, 160)))
        values = rng.standard_normal((1, classes, *size_in)) * 5
        if rng.integers(0, 3) == 0:
            values = np.round(values)
        logits = torch.from_numpy(values.astype(np.float32))
        if rng.integers(0, 2):
            logits = logits.contiguous(memory_format=torch.channels_last)
        expected = F.interpolate(logits, size=size_out, mode="bilinear", align_corners=False)[0]
        vectorised = channel_vectorised(classes, logits.is_contiguous(memory_format=torch.channels_last),
                                        size_out, torch.device("cpu"))
        ours = emulate_resize(logits[0].contiguous(), size_out, arithmetic, vectorised)
        assert torch.equal(ours, expected), (classes, size_in, size_out, vectorised)


def test_the_wrong_rounding_rules_are_caught() -> None:
    """The emulation is sensitive to what the probe decides: other rules differ from the kernel."""
    arithmetic = kernel_arithmetic("cpu")
    logits = torch.from_numpy(np.random.default_rng(0).standard_normal((19, 9, 13)).astype(np.float32) * 5)
    expected = F.interpolate(logits[None], size=(90, 140), mode="bilinear", align_corners=False)[0]
    for rule in SumRule:
        if rule is not arithmetic.generic:
            wrong = KernelArithmetic(arithmetic.source_fused, rule)
            assert not torch.equal(emulate_resize(logits, (90, 140), wrong, False), expected), rule


def test_path_selection_rules() -> None:
    cpu = torch.device("cpu")
    limit = CHANNEL_VECTORISED_MAX_OUTPUT
    assert channel_vectorised(150, False, (limit - 60, 60), cpu)
    assert not channel_vectorised(150, False, (limit - 59, 60), cpu)
    assert channel_vectorised(150, True, (512, 704), cpu) and not channel_vectorised(3, True, (512, 704), cpu)
    assert not channel_vectorised(150, False, (8, 8), torch.device("meta"))  # no such path off the CPU
    assert tail_classes(19, KernelArithmetic(True, SumRule.FIRST, 8)).nonzero().flatten().tolist() == [16, 17, 18]
    assert not tail_classes(16, KernelArithmetic(True, SumRule.FIRST, 8)).any()
    logits = torch.zeros(1, 5, 3, 4)
    assert not resized_channels_last(logits)
    assert resized_channels_last(logits.contiguous(memory_format=torch.channels_last))
    assert not resized_channels_last(torch.zeros(1, 5, 1, 1))  # both layouts at once: stays plain
