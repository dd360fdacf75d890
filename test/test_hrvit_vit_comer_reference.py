"""HRViT and ViT-CoMer against golden outputs of the official code: the compact cases shipped in
test/golden/{hrvit,vit_comer} (always) and the full cases of ../shared/reference/{hrvit,vit_comer} (where
that folder exists), read and checked by ``golden_cases`` like every other family.

Each case is built through ``build_network(name)``, must have the official state_dict keys, shapes and
parameter count, loads the seeded reference weights strictly, and must reproduce every stored array
(module outputs and first inputs named by the case) within the case's tolerance; the labels agree except
on the case's near ties. A case's compact and full forms share one forward. About 30 s on 2 cores (the
UperNet heads at 512² dominate).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from golden_cases import (
    COMPACT_ROOT, Forwards, GoldenCase, assert_matches, capture_arrays, case_params, check_input,
    check_state_dict, load_case, mismatches, read_compact, reference_network, sources, tanh_gelu, wrong_norm_eps,
)
from dense_perception.networks import build_network

pytestmark = pytest.mark.golden
FAMILIES = ("hrvit", "vit_comer")
CASES = [pytest.param(family, case_id, id=f"{family}-{case_id}")
         for family in FAMILIES for case_id in case_params(family)]


def network_for(case: GoldenCase) -> nn.Module:
    return reference_network(case.settings)


@pytest.fixture(scope="module")
def forwards() -> Forwards:
    return Forwards(network_for)


@pytest.mark.parametrize(("family", "case_id"), CASES)
def test_network_has_the_official_size(family: str, case_id: str) -> None:
    case = load_case(family, case_id)
    net = build_network(case.settings["network"])
    assert net.num_classes == case.settings["num_classes"]
    assert sum(p.numel() for p in net.parameters()) == case.full_meta["num_parameters"]


@pytest.mark.parametrize(("family", "case_id"), CASES)
def test_matches_official_arrays(family: str, case_id: str, forwards: Forwards) -> None:
    case = load_case(family, case_id)
    check_input(case)
    keys, ours = forwards(case)
    check_state_dict(case, keys)
    assert_matches(case, ours)


# ---- the compact cases still catch eps-level porting mistakes --------------------------------------


def _attention_scale_of_half_width(net: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    """HRViT's stripe attention scaled by ``(C/2)^-0.5`` (the whole half as one head) instead of the head
    width's: the subtlest mistake of its tolerance study (7x the bound on two arrays)."""
    attention = torch.nn.functional.scaled_dot_product_attention

    def half_width_scale(q: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        heads, head_width = q.shape[-3], q.shape[-1]  # [B, stripes, heads, tokens, C/heads]
        return attention(q, *args, **kwargs, scale=(heads * head_width) ** -0.5)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", half_width_scale)


#: mistake -> (compact case, injection). Each case's tolerance study measures its effect on the official
#: code: the wrong LayerNorm eps moves HRViT's output 20x and ViT-CoMer's 9x the bound, the tanh GELU 3.5x
#: and 4.2x (more on intermediate arrays); the stored pieces must still see them.
MISTAKES = {
    "hrvit_layernorm_eps_1e-6": ("hrvit/hrvit_b1_segformer_ade20k_512x512", wrong_norm_eps(nn.LayerNorm, 1e-5, 1e-6)),
    "hrvit_gelu_tanh": ("hrvit/hrvit_b1_segformer_ade20k_512x512", tanh_gelu),
    "hrvit_attention_scale_half_width": ("hrvit/hrvit_b1_segformer_ade20k_512x512", _attention_scale_of_half_width),
    "vit_comer_layernorm_eps_1e-5": ("vit_comer/vit_comer_t_upernet_ade20k_384x512",
                                     wrong_norm_eps(nn.LayerNorm, 1e-6, 1e-5)),
    "vit_comer_gelu_tanh": ("vit_comer/vit_comer_t_upernet_ade20k_384x512", tanh_gelu),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_compact_case_catches_porting_mistakes(mistake: str, monkeypatch: pytest.MonkeyPatch) -> None:
    case_name, inject = MISTAKES[mistake]
    case = read_compact(COMPACT_ROOT / case_name)
    net = network_for(case)
    inject(net, monkeypatch)
    ours = capture_arrays(net, check_input(case), sources(case))
    assert mismatches(case, ours), f"{mistake} passed {case.id}"
