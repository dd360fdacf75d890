"""DPT against golden outputs of the official code (compact cases in test/golden/dpt always, the full
cases of ../shared/reference/dpt where that folder exists), plus structural checks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from golden_cases import (
    COMPACT_ROOT, Forwards, GoldenCase, assert_matches, capture_arrays, case_params, check_input,
    check_state_dict, load_case, mismatches, read_compact, reference_network, sources,
    tanh_gelu,
)
from dense_perception.networks import CheckpointError, available_networks, build_network, load_weights, network_spec
from dense_perception.networks.common import fill_reference_weights
from dense_perception.networks.cost import count_cost
from dense_perception.networks.depth_units import KITTI, MIDAS, NYU, to_metres
from dense_perception.networks.dpt import DPT
from dense_perception.networks.resnet import StdConv2dSame, pad_same, same_padding, standardise_weight
from dense_perception.networks.vit import resize_pos_embed

CASES = case_params("dpt")
DPT_NAMES = ("dpt_hybrid_kitti", "dpt_hybrid_midas", "dpt_hybrid_nyu", "dpt_large_midas")


@pytest.fixture(scope="module")
def hybrid() -> DPT:
    """One hybrid network with the reference weights, shared by the cheap tests."""
    net = build_network("dpt_hybrid_midas")
    load_weights(net, fill_reference_weights(net))
    return net


def network_for(case: GoldenCase) -> DPT:
    """The case's network with the reference weights."""
    return reference_network(case.settings)


@pytest.fixture(scope="module")
def forwards() -> Forwards:
    return Forwards(network_for)


@pytest.mark.golden
@pytest.mark.parametrize("case_id", CASES)
def test_matches_official_output(case_id: str, forwards: Forwards) -> None:
    """``output`` (metres for the metric heads: the official invert step), ``pre_relu`` (the final
    conv before the ReLU: under the weight rule the output itself is constant) and the inputs of
    ``scratch.layer1..4_rn`` (held to at least their float32 noise, ``golden_cases.FLOAT32_NOISE_FLOOR``)."""
    case = load_case("dpt", case_id)
    check_input(case)
    keys, ours = forwards(case)
    check_state_dict(case, keys)
    assert_matches(case, ours)


# --- the compact cases still catch eps-level porting mistakes --------------------------------------


def _stdconv_eps(net: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    for module in net.modules():
        if isinstance(module, StdConv2dSame):
            monkeypatch.setattr(module, "eps", 1e-8)


def _flip_align_corners(net: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every bilinear resize with the other ``align_corners`` (decoder: False; position embedding: True)."""
    interpolate = F.interpolate

    def flipped(*args, **kwargs):
        if kwargs.get("mode") == "bilinear":
            kwargs["align_corners"] = not kwargs.get("align_corners", False)
        return interpolate(*args, **kwargs)
    monkeypatch.setattr(F, "interpolate", flipped)


def _pos_embed_align_corners(net: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the position-embedding resize with ``align_corners=True`` (the decoder's are True already)."""
    interpolate = F.interpolate
    monkeypatch.setattr(F, "interpolate",
                        lambda *args, **kwargs: interpolate(*args, **{**kwargs, "align_corners": True}))


MISTAKES = {
    "stdconv_eps_1e-8": ("dpt_hybrid_midas_384x384", _stdconv_eps),
    "gelu_tanh": ("dpt_hybrid_midas_384x384", tanh_gelu),
    "decoder_align_corners_false": ("dpt_hybrid_midas_384x384", _flip_align_corners),
    "pos_embed_align_corners_true": ("dpt_hybrid_nyu_480x640", _pos_embed_align_corners),
}


@pytest.mark.golden
@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_compact_case_catches_porting_mistakes(mistake: str, monkeypatch: pytest.MonkeyPatch) -> None:
    case_name, inject = MISTAKES[mistake]
    case = read_compact(COMPACT_ROOT / "dpt" / case_name)
    net = network_for(case)
    inject(net, monkeypatch)
    ours = capture_arrays(net, check_input(case), sources(case))
    assert mismatches(case, ours), f"{mistake} passed {case.id}"


# --- registry, keys, parameters ------------------------------------------------------------------


def test_registry_entries() -> None:
    assert set(DPT_NAMES) <= set(available_networks("depth"))
    for name in DPT_NAMES:
        spec = network_spec(name)
        assert (spec.task, spec.family) == ("depth", "dpt")
        assert spec.dataset == name.rsplit("_", 1)[1]
        assert spec.output is {"midas": MIDAS, "nyu": NYU, "kitti": KITTI}[spec.dataset]


@pytest.mark.parametrize("name, params", [("dpt_hybrid_midas", 123_146_985), ("dpt_large_midas", 344_055_465)])
def test_parameter_counts(name: str, params: int) -> None:
    net = build_network(name)
    assert sum(p.numel() for p in net.parameters()) == params
    assert len(net.state_dict()) == 368
    assert all(v.dtype == torch.float32 for v in net.state_dict().values())
    assert not list(net.buffers())


@pytest.mark.parametrize("name", ["dpt_hybrid_nyu", "dpt_hybrid_kitti"])
def test_metric_heads_share_hybrid_keys(name: str) -> None:
    ref_keys = {k: v.shape for k, v in build_network("dpt_hybrid_midas").state_dict().items()}
    net = build_network(name)
    assert {k: v.shape for k, v in net.state_dict().items()} == ref_keys
    assert net.output_units.kind == "metric"


def test_norm_and_standardisation_eps(hybrid: DPT) -> None:
    vit_norms = [m for m in hybrid.pretrained.model.modules() if isinstance(m, nn.LayerNorm)]
    assert len(vit_norms) == 2 * 12 + 1 and all(m.eps == 1e-6 for m in vit_norms)
    group_norms = [m for m in hybrid.modules() if isinstance(m, nn.GroupNorm)]
    assert group_norms and all(m.eps == 1e-5 and m.num_groups == 32 for m in group_norms)
    convs = [m for m in hybrid.modules() if isinstance(m, StdConv2dSame)]
    assert len(convs) == 1 + 3 * 16 + 3 and all(m.eps == 1e-5 and m.bias is None for m in convs)
    large_norms = [m for m in build_network("dpt_large_midas").modules() if isinstance(m, nn.LayerNorm)]
    assert len(large_norms) == 2 * 24 + 1 and all(m.eps == 1e-6 for m in large_norms)


def test_weight_standardisation_is_std_plus_eps() -> None:
    w = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(0)) * 0.02
    flat = w.double().flatten(1)
    expected = (flat - flat.mean(1, keepdim=True)) / (flat.std(1, unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(standardise_weight(w).double().flatten(1), expected, rtol=1e-5, atol=1e-6)


def test_tf_same_padding_is_asymmetric() -> None:
    assert same_padding(384, 7, 2) == (2, 3)
    assert same_padding(96, 3, 2) == (0, 1)
    assert same_padding(96, 1, 2) == (0, 0)
    assert same_padding(96, 3, 1) == (1, 1)
    x = torch.ones(1, 1, 4, 4)
    padded = pad_same(x, (3, 3), (2, 2), value=float("-inf"))
    assert padded.shape == (1, 1, 5, 5)
    assert torch.isinf(padded[0, 0, -1]).all() and torch.isinf(padded[0, 0, :, -1]).all()
    assert torch.isfinite(padded[0, 0, :4, :4]).all()  # nothing before (top/left)


def test_pos_embed_resize_bilinear_without_align_corners() -> None:
    pos = torch.randn(1, 1 + 24 * 24, 8, generator=torch.Generator().manual_seed(0))
    assert resize_pos_embed(pos, (24, 24)) is pos
    out = resize_pos_embed(pos, (24, 42))
    assert out.shape == (1, 1 + 24 * 42, 8)
    torch.testing.assert_close(out[:, 0], pos[:, 0])
    grid = pos[:, 1:].reshape(1, 24, 24, 8).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, size=(24, 42), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[:, 1:], expected.flatten(2).transpose(1, 2))


def test_wrong_checkpoint_is_rejected_clearly() -> None:
    net = build_network("dpt_hybrid_midas")
    edaformer = build_network("edaformer_t_ade20k")
    with pytest.raises(CheckpointError, match=r"does not fit DPT dpt_hybrid_midas: .*missing: .*unexpected: "):
        load_weights(net, edaformer.state_dict())
    large = build_network("dpt_large_midas").state_dict()
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_weights(net, {k: large.get(k, v) for k, v in net.state_dict().items()})


# --- input handling and other sizes --------------------------------------------------------------


@pytest.mark.parametrize("bad, error, message", [
    (torch.zeros(1, 3, 100, 128), ValueError, "multiples of 32"),
    (torch.zeros(3, 64, 64), ValueError, "4-D"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), TypeError, "floating-point"),
    (torch.zeros(0, 3, 64, 64), ValueError, "empty"),
    (torch.zeros(1, 1, 64, 64), ValueError, "3 channels"),
])
def test_rejects_bad_input(hybrid: DPT, bad: torch.Tensor, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        hybrid(bad)


def test_non_square_non_384_input(hybrid: DPT) -> None:
    x = torch.randn(2, 3, 256, 320, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = hybrid(x)
    assert out.shape == (2, 256, 320) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and (out >= 0).all()


def test_cost_on_meta_device() -> None:
    """Spec section 12: hybrid 127.6 / large 258.2 GMACs at 384×384; hybrid 231.3 at 384×672."""
    for name, size, gmacs in [("dpt_hybrid_midas", (384, 384), 127.6), ("dpt_hybrid_midas", (384, 672), 231.3),
                              ("dpt_large_midas", (384, 384), 258.2)]:
        cost = count_cost(build_network(name), *size)
        assert abs(cost.total_macs / 1e9 - gmacs) < 0.05, (name, size, cost.total_macs)


# --- output units --------------------------------------------------------------------------------


def test_output_units_and_to_metres() -> None:
    assert build_network("dpt_large_midas").output_units is MIDAS
    assert build_network("dpt_hybrid_kitti").output_units is KITTI
    raw = np.array([0.0, 1000.0, -1e9], dtype=np.float32)
    metres = to_metres(raw, NYU.scale, NYU.shift)
    assert metres.dtype == np.float32
    np.testing.assert_allclose(metres[:2], [1 / 0.1378, 1 / (0.000305 * 1000 + 0.1378)], rtol=1e-6)
    assert metres[2] == pytest.approx(1e8)  # clamped at 1e-8 before inverting
    torch.testing.assert_close(KITTI.to_metres(torch.tensor([100.0])),
                               torch.tensor([1 / (0.00006016 * 100 + 0.00579)]))
    with pytest.raises(ValueError, match="no metric scale"):
        MIDAS.to_metres(raw)
