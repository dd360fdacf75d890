"""The torch engine on CUDA: the golden references (fp32 at each case's own tolerance, fp16 within a
documented bound), an engine on the second GPU, and ISR switches while frames stream.

``pytest -m cuda`` selects these; without a CUDA GPU they are skipped with the reason (``gpu_support``).
``scripts/gpu_check.sh`` runs them on a GPU machine and reports each case's measured error, which the
tests record as JUnit properties (``max_rel_error``, ``bound``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import reference_root
from dense_perception.engines.torch_engine import TorchEngine
from dense_perception.networks import ISRSetting, build_network, load_weights
from dense_perception.networks.common import fill_reference_weights
from gpu_support import FP16_BOUND, FP16_BOUND_DPT_LAYERS, cuda_marks, with_marks

pytestmark = cuda_marks()

#: Share of EDAFormer's full-size labels (``pred``) that must agree with the official ones: float32 moves
#: logits by ~1e-7, which flips a label only where two classes tie within that; fp16 moves them by ~1e-3.
LABEL_AGREEMENT = {"fp32": 0.9999, "fp16": 0.99}
#: DPT's layer arrays carry float32 accumulation-order noise up to 4e-5 relative (the cases' own notes;
#: the same allowance as test_dpt_reference.FLOAT32_NOISE_LAYERS on the CPU).
FLOAT32_NOISE_LAYERS = 4e-5
FAMILIES = ("edaformer", "dpt")


# ---- golden cases: the one place that knows where they come from ---------------------------------
@dataclass(frozen=True)
class GoldenCase:
    """What a golden comparison needs: the network, its ISR setting, the input and the expected arrays,
    each with the module whose output (or, for ``inputs_of``, first input) it is and its tolerance."""

    family: str
    name: str
    network: str
    isr: ISRSetting | None
    input: np.ndarray
    expected: dict[str, np.ndarray]
    outputs_of: dict[str, str]
    inputs_of: dict[str, str]
    tolerance: dict[str, float]


def golden_case_names() -> list[tuple[str, str]]:
    """``(family, case)`` for every golden case present: the shared full references today (switch to the
    repository's compact cases here, and in :func:`load_golden_case`, once they ship)."""
    root = reference_root()
    return [(family, path.name[: -len(".keys.json")]) for family in FAMILIES
            for path in sorted((root / family).glob("*.keys.json"))]


def load_golden_case(family: str, name: str) -> GoldenCase:
    folder = reference_root() / family
    meta = json.loads((folder / f"{name}.keys.json").read_text())
    with np.load(folder / f"{name}.npz") as npz:
        arrays = {key: npz[key] for key in npz.files}
    settings = meta["settings"]
    isr = settings.get("isr")
    return GoldenCase(family, name, settings["network"],
                      ISRSetting(tuple(isr["encoder"]), tuple(isr["decoder"])) if isr else None,
                      arrays.pop("input"), arrays, meta.get("compare_hooks", {}), meta.get("compare_inputs", {}),
                      meta.get("tolerance", {}))


def _case_params() -> list:
    names = golden_case_names()
    if not names:
        return [pytest.param(None, marks=pytest.mark.skip(
            reason=f"no golden cases: {reference_root()} has no {'/'.join(FAMILIES)} cases "
                   f"(set DENSE_PERCEPTION_REFERENCE)"))]
    return [pytest.param(name, id=name[1]) for name in names]


# ---- comparing -----------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _network(network: str) -> nn.Module:
    """One network with the references' weights at a time (DPT-Large is the costly one to build)."""
    net = build_network(network)
    load_weights(net, fill_reference_weights(net))
    return net


def relative_error(ours: np.ndarray, expected: np.ndarray) -> float:
    """max|ours - expected| / max(1, max|expected|), the references' rule."""
    assert ours.shape == expected.shape, f"shape {ours.shape} vs reference {expected.shape}"
    return float(np.abs(ours.astype(np.float64) - expected).max() / max(1.0, float(np.abs(expected).max())))


def run_case(case: GoldenCase, precision: str, device: str = "cuda") -> dict[str, np.ndarray]:
    """The case's arrays from the torch engine on ``device`` at ``precision`` (hooks on its network)."""
    engine = TorchEngine(_network(case.network), device, precision)
    if case.isr is not None:
        engine.set_isr(case.isr)
    got: dict[str, torch.Tensor] = {}

    def keep(array: str, tensor: torch.Tensor) -> None:
        got[array] = tensor.detach().float().cpu()

    handles = [engine.net.get_submodule(path).register_forward_hook(
        lambda _m, _i, out, a=array: keep(a, out)) for array, path in case.outputs_of.items()]
    handles += [engine.net.get_submodule(path).register_forward_pre_hook(
        lambda _m, args, a=array: keep(a, args[0])) for array, path in case.inputs_of.items()]
    try:
        keep("output", engine.infer(torch.from_numpy(case.input)))
    finally:
        for handle in handles:
            handle.remove()
    if "backbone_stage1" in case.expected:  # EDAFormer stage outputs
        with torch.inference_mode(), engine._precision():
            stages = engine.net.forward_features(torch.from_numpy(case.input).to(device))
        got.update({f"backbone_stage{i}": stage.float().cpu() for i, stage in enumerate(stages, start=1)})
    if "pred" in case.expected:  # EDAFormer labels at the input size, as the official code upsamples them
        full = F.interpolate(got["output"], size=case.input.shape[2:], mode="bilinear", align_corners=False)
        got["pred"] = full.argmax(1)
    arrays = {}
    for array, expected in case.expected.items():
        ours = got[array].numpy()
        if array in case.inputs_of and ours.shape[1] > expected.shape[1]:
            ours = ours[:, : expected.shape[1]]  # the reference keeps the leading channels
        arrays[array] = ours
    return arrays


def fp32_bound(case: GoldenCase, array: str) -> float:
    """The case's tolerance for ``array`` (1e-4 where it names none, 1e-5 for EDAFormer's stage outputs, as
    on the CPU), with DPT's layer arrays allowed their float32 noise."""
    bound = case.tolerance.get(array, 1e-5 if array.startswith("backbone_stage") else 1e-4)
    return max(bound, FLOAT32_NOISE_LAYERS) if case.family == "dpt" and array.startswith("layer") else bound


def fp16_bound(case: GoldenCase, array: str) -> float:
    return FP16_BOUND_DPT_LAYERS if case.family == "dpt" and array.startswith("layer") else FP16_BOUND


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("case_name", _case_params())
def test_torch_cuda_engine_reproduces_the_golden_case(case_name: tuple[str, str], precision: str,
                                                      record_property) -> None:
    case = load_golden_case(*case_name)
    ours = run_case(case, precision)
    if "pred" in case.expected:
        agreement = float((ours.pop("pred") == case.expected["pred"]).mean())
        record_property("label_agreement", f"{agreement:.6f}")
        assert agreement >= LABEL_AGREEMENT[precision], f"{case.name} {precision}: labels agree on {agreement:.6f}"
    errors = {array: relative_error(ours[array], case.expected[array]) for array in ours}
    bounds = {array: fp32_bound(case, array) if precision == "fp32" else fp16_bound(case, array) for array in errors}
    worst = max(errors, key=lambda array: errors[array] / bounds[array])
    record_property("max_rel_error", f"{errors[worst]:.3g} ({worst})")
    record_property("bound", f"{bounds[worst]:.3g}")
    over = {array: f"{errors[array]:.3g} > {bounds[array]:.3g}" for array in errors if errors[array] > bounds[array]}
    assert not over, f"{case.name} {precision} on CUDA: {over}"


# ---- devices and streaming -----------------------------------------------------------------------
def _small_segmenter_net() -> nn.Module:
    net = build_network("edaformer_t_ade20k")
    load_weights(net, fill_reference_weights(net))
    return net.eval()


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
