"""EDAFormer against golden outputs of the official code: the compact cases shipped in test/golden/edaformer
(always) and the full cases of ../shared/reference/edaformer (where that folder exists)."""
from __future__ import annotations

import pytest
import torch.nn.functional as F
from torch import nn

from golden_cases import (
    COMPACT_ROOT, Forwards, GoldenCase, assert_matches, capture_arrays, case_params, check_input,
    check_state_dict, load_case, mismatches, read_compact, reference_network, sources,
    tanh_gelu,
)
from dense_perception.engines.onednn import onednn_linear_available
from dense_perception.engines.torch_engine import TorchEngine
from dense_perception.networks import ISRSetting
from dense_perception.networks.edaformer import EDAFormer

pytestmark = pytest.mark.golden
CASES = case_params("edaformer")
#: Linear layers the CPU torch engine runs on oneDNN (every encoder and decoder token layer of T; B's
#: wider stage-3/4 layers stay on MKL).
ONEDNN_LINEARS = {"t": 66, "b": 93}
#: The compact case the deliberate mistakes are run against (EDAFormer-T: cheap).
MISTAKE_CASE = "edaformer_t_ade20k_512x512_base_enc1111_dec111"


def isr_of(case: GoldenCase) -> ISRSetting:
    return ISRSetting(tuple(case.settings["isr"]["encoder"]), tuple(case.settings["isr"]["decoder"]))


def network_for(case: GoldenCase) -> EDAFormer:
    """The case's network with the reference weights and ISR setting."""
    net = reference_network(case.settings)
    assert net.isr == isr_of(case)
    return net


@pytest.fixture(scope="module")
def forwards() -> Forwards:
    return Forwards(network_for)


@pytest.mark.parametrize("case_id", CASES)
def test_matches_official_output(case_id: str, forwards: Forwards) -> None:
    case = load_case("edaformer", case_id)
    check_input(case)
    keys, ours = forwards(case)
    check_state_dict(case, keys)
    assert_matches(case, ours)


@pytest.mark.parametrize("case_id", CASES)
def test_torch_engine_matches_official_output(case_id: str) -> None:
    """The CPU torch engine as shipped (oneDNN linear layers, tuned malloc) keeps the case's tolerance."""
    case = load_case("edaformer", case_id)
    net = network_for(case)
    engine = TorchEngine(net, "cpu")
    engine.set_isr(isr_of(case))
    assert engine.describe()["onednn_linears"] == (ONEDNN_LINEARS[net.variant] if onednn_linear_available() else 0)
    logits = engine.infer(check_input(case))
    assert_matches(case, {"output": logits.numpy()}, only=["output"])


# ---- the compact case still catches eps-level porting mistakes -------------------------------------


def _encoder_layernorm_eps(net: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    for module in net.backbone.modules():
        if isinstance(module, nn.LayerNorm) and module.eps == 1e-6:
            monkeypatch.setattr(module, "eps", 1e-5)


def _stage1_pool_plus_one(net: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    for block in net.backbone.block1:
        monkeypatch.setattr(block.attn, "pool", block.attn.pool + 1)


def _align_corners(net: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    interpolate = F.interpolate
    monkeypatch.setattr(F, "interpolate",
                        lambda *args, **kwargs: interpolate(*args, **{**kwargs, "align_corners": True}))


@pytest.mark.parametrize("mistake", [_encoder_layernorm_eps, tanh_gelu, _stage1_pool_plus_one, _align_corners],
                         ids=["layernorm_eps_1e-5", "gelu_tanh", "stage1_pool_9", "align_corners_true"])
def test_compact_case_catches_porting_mistakes(mistake, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each mistake moves the logits by 1.5x (LayerNorm eps) to 1e5x (align_corners) the compact bound."""
    case = read_compact(COMPACT_ROOT / "edaformer" / MISTAKE_CASE)
    net = network_for(case)
    mistake(net, monkeypatch)
    ours = capture_arrays(net, check_input(case), sources(case))
    assert mismatches(case, ours), f"{mistake.__name__} passed the compact case"
