"""SegFormer / PVTv2 against golden outputs of the official code: the compact cases shipped in
test/golden/sra (always) and the full cases of ../shared/reference/sra (where that folder exists).

Each case is built through ``build_network(settings.network)`` with the official keys, loaded with the
seeded weight rule, set to the case's ISR setting, and compared with every stored array at the module
the case names (``compare_hooks``: that module's output; ``compare_inputs``: its first input); arrays
named ``*_ch0_N`` / ``*_tok0_N`` (and those in ``stored_channels``) hold the leading N entries of dim 1.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from golden_cases import (
    Forwards, GoldenCase, assert_matches, case_params, check_input, check_state_dict, load_case, mismatches,
    seeded_input,
)
from dense_perception.networks import ISRSetting, build_network, load_weights
from dense_perception.networks.common import fill_reference_weights

pytestmark = pytest.mark.golden
CASES = case_params("sra")
#: The compact cases every clone runs: at least one SegFormer and one PVT.
SHIPPED = ("compact/segformer_b0_ade20k_512x512", "compact/segformer_b1_ade20k_512x512_isr16-8-2-1",
           "compact/pvt_v2_b1_fpn_ade20k_512x512")


def network_for(case: GoldenCase) -> nn.Module:
    """The case's network with the reference weights and ISR setting (None: the training ratios)."""
    net = build_network(str(case.settings["network"]))
    load_weights(net, fill_reference_weights(net))
    isr = case.settings["isr"]
    if isr is None:
        assert net.isr_scheme.is_training(net.isr)
    else:
        net.set_isr(encoder=isr["encoder"])
        assert net.isr == ISRSetting(tuple(isr["encoder"]), ())
    return net


@pytest.fixture(scope="module")
def forwards() -> Forwards:
    return Forwards(network_for)


def test_compact_cases_ship() -> None:
    assert set(SHIPPED) <= set(CASES)


@pytest.mark.parametrize("case_id", CASES)
def test_matches_official_output(case_id: str, forwards: Forwards) -> None:
    case = load_case("sra", case_id)
    check_input(case)
    keys, ours = forwards(case)
    check_state_dict(case, keys)
    assert set(case.arrays) >= {"output", "pred"} and len(case.arrays) >= 10, "every stored array is compared"
    assert_matches(case, ours)


def test_a_wrong_isr_setting_is_caught() -> None:
    """The ISR case run without its setting misses the reference: the cases can fail."""
    case = load_case("sra", "compact/segformer_b1_ade20k_512x512_isr16-8-2-1")
    net = build_network("segformer_b1_ade20k")
    load_weights(net, fill_reference_weights(net))  # training ratios [8,4,2,1] instead of [16,8,2,1]
    with torch.no_grad():
        logits = net(seeded_input(case.input_shape))
    assert mismatches(case, {"output": logits.numpy()}, only=["output"]), "training ratios match the ISR case"


def test_labels_follow_the_official_tail() -> None:
    """``pred`` = bilinear resize of the logits to the input, then argmax (the official encode_decode)."""
    case = load_case("sra", "compact/segformer_b0_ade20k_512x512")
    net = network_for(case)
    x = seeded_input(case.input_shape)
    with torch.no_grad():
        logits = net(x)
    nearest = F.interpolate(logits, size=x.shape[2:], mode="nearest").argmax(1).to(torch.uint8).numpy()
    assert mismatches(case, {"pred": nearest}, only=["pred"]), "a nearest-neighbour resize is caught"
