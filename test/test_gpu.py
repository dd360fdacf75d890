"""The torch engine on CUDA: the golden references (fp32 at each case's own tolerance, fp16 within a
documented bound), an engine on the second GPU, and ISR switches while frames stream.

``pytest -m cuda`` selects these; without a CUDA GPU they are skipped with the reason (``gpu_support``).
The golden cases are those of every CPU reference test, read by ``golden_cases``: the compact cases
shipped in test/golden always, the full ones of ../shared/reference where present (a missing folder skips
its ``full/-`` entry by name, or fails with ``DENSE_PERCEPTION_REQUIRE_REFERENCE=1``).
``scripts/gpu_check.sh`` runs them on a GPU machine and reports each case's measured error, which the
tests record as JUnit properties (``max_rel_error``, ``bound``, ``label_agreement``).
"""
from __future__ import annotations

from functools import lru_cache

import pytest
import torch
from torch import nn

from dense_perception.engines.torch_engine import TorchEngine
from dense_perception.networks import ISRSetting
from golden_cases import (
    FAMILIES, Forwards, GoldenCase, Tolerance, bound, case_params, label_agreement, load_case, mismatches,
    reference_network, relative_errors, set_case_isr,
)
from gpu_support import FP16_BOUND, FP16_BOUND_DPT_LAYERS, cuda_marks, with_marks

pytestmark = cuda_marks()

#: Share of the labels (``pred``, each stored piece) that must agree with the official ones: float32 moves
#: logits by ~1e-7, which flips a label only where two classes tie within that; fp16 moves them by ~1e-3.
LABEL_AGREEMENT = {"fp32": 0.9999, "fp16": 0.99}
PRECISIONS = ("fp32", "fp16")
CASES = [pytest.param(family, case_id, id=f"{family}-{case_id}")
         for family in FAMILIES for case_id in case_params(family)]


@pytest.fixture(scope="module")
def engine_forwards() -> dict[str, Forwards]:
    """Per precision, the cases' arrays from the torch engine on CUDA (hooks on its network; a case's compact
    and full forms share one forward). One network with the references' weights is kept at a time, shared by
    the precisions and by the cases of one network (DPT-Large is the costly one to build)."""
    network = lru_cache(maxsize=1)(lambda name: reference_network({"network": name}))

    def build(case: GoldenCase) -> nn.Module:
        net = network(case.settings["network"])
        set_case_isr(net, case.settings)
        return net

    return {precision: Forwards(build, lambda net, precision=precision: TorchEngine(net, "cuda", precision).infer)
            for precision in PRECISIONS}


def widening(case: GoldenCase, precision: str) -> Tolerance:
    """fp32: each array's own bound (``golden_cases.bound``); fp16: the documented fp16 bounds."""
    if precision == "fp32":
        return lambda array, rel: rel
    return lambda array, rel: FP16_BOUND_DPT_LAYERS if case.family == "dpt" and array.startswith("layer") \
        else FP16_BOUND


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize(("family", "case_id"), CASES)
def test_torch_cuda_engine_reproduces_the_golden_case(family: str, case_id: str, precision: str,
                                                      engine_forwards: dict[str, Forwards], record_property) -> None:
    case = load_case(family, case_id)
    _keys, ours = engine_forwards[precision](case)
    tolerance = widening(case, precision)
    failures = []
    for array in [name for name, ref in case.arrays.items() if ref.exact]:
        agreement = label_agreement(case, array, ours[array])
        record_property("label_agreement", f"{agreement:.6f}")
        if agreement < LABEL_AGREEMENT[precision]:
            failures.append(f"{case.id} {array}: labels agree on {agreement:.6f}")
    errors = relative_errors(case, ours)
    bounds = {array: bound(case, array, tolerance) for array in errors}
    worst = max(errors, key=lambda array: errors[array] / bounds[array])
    record_property("max_rel_error", f"{errors[worst]:.3g} ({worst})")
    record_property("bound", f"{bounds[worst]:.3g}")
    failures += mismatches(case, ours, tolerance=tolerance, only=list(errors))
    assert not failures, f"{precision} on CUDA: " + "; ".join(failures)  # one line: the GPU report shows it


# ---- devices and streaming -----------------------------------------------------------------------
def _small_segmenter_net() -> nn.Module:
    return reference_network({"network": "edaformer_t_ade20k"}).eval()


@with_marks(cuda_marks(gpus=2))
def test_torch_engine_on_the_second_gpu_keeps_its_work_there() -> None:
    net = _small_segmenter_net()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = net(x)
    torch.cuda.set_device(0)
    engine = TorchEngine(net, "cuda:1")
    before = torch.cuda.memory_allocated(0)
    out = engine.infer(x)
    assert out.device == torch.device("cuda", 1) and torch.cuda.memory_allocated(0) == before
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-4, atol=1e-4)


def test_torch_cuda_engine_switches_isr_between_streamed_frames() -> None:
    """Frame after frame on CUDA, the ISR setting switching every few frames: each frame is computed at
    the setting in force when it was submitted (the CPU's fp32 result at that setting)."""
    net = _small_segmenter_net()
    settings = [ISRSetting(), ISRSetting.from_ratio(2), ISRSetting((16, 8, 2, 1), (2, 4, 8))]
    generator = torch.Generator().manual_seed(1)
    frames = [torch.randn(1, 3, 64, 64, generator=generator) for _ in range(12)]
    expected = []
    for index, frame in enumerate(frames):
        net.set_isr(settings[index // 4])
        with torch.no_grad():
            expected.append(net(frame))
    engine = TorchEngine(net, "cuda")
    outputs = []
    for index, frame in enumerate(frames):
        if index % 4 == 0:
            engine.set_isr(settings[index // 4])
        outputs.append(engine.infer(frame))  # queued on the GPU, not synchronised per frame
    torch.cuda.synchronize()
    for index, (out, reference) in enumerate(zip(outputs, expected)):
        torch.testing.assert_close(out.cpu(), reference, rtol=1e-4, atol=1e-4, msg=f"frame {index}")
