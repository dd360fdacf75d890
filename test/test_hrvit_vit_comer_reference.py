"""HRViT and ViT-CoMer against golden outputs of the official code (``shared/reference/{hrvit,vit_comer}``).

Each case is built through ``build_network(name)``, must have the official state_dict keys and shapes,
loads the seeded reference weights strictly, and must reproduce every stored array (module outputs
and first inputs named by the case) within the case's tolerance. Skipped without ``../shared``.
About 20 s on 2 cores (the two ViT-CoMer-T cases dominate).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close_rel, capture_arrays, leading_entries, load_case, reference_root
from dense_perception.networks import build_network, load_weights
from dense_perception.networks.common import fill_reference_weights

FAMILIES = ("hrvit", "vit_comer")
#: Pixels whose top-2 logit gap (after the resize to the input) is below this may flip legitimately.
NEAR_TIE = 1e-5


def _cases() -> list:
    found = [(family, path.name[: -len(".keys.json")])
             for family in FAMILIES for path in sorted((reference_root() / family).glob("*.keys.json"))]
    if found:
        return found
    reason = (f"no golden cases under {reference_root()}/{{{','.join(FAMILIES)}}}: the shared references "
              f"(../shared) are absent; set DENSE_PERCEPTION_REFERENCE")
    return [pytest.param("", "", marks=pytest.mark.skip(reason=reason))]


@pytest.mark.parametrize(("family", "case"), _cases())
def test_matches_official_arrays(family: str, case: str) -> None:
    meta, ref = load_case(family, case)
    settings = meta["settings"]
    net = build_network(settings["network"])
    assert net.num_classes == settings["num_classes"]

    ours = [[k, list(v.shape)] for k, v in sorted(net.state_dict().items())]
    assert ours == [[k, shape] for k, shape, _ in meta["keys"]], "state_dict keys/shapes differ from official"
    assert sum(p.numel() for p in net.parameters()) == meta["num_parameters"]

    load_weights(net, fill_reference_weights(net))
    x = torch.from_numpy(ref["input"])
    got = capture_arrays(net, meta.get("compare_hooks", {}), meta.get("compare_inputs", {}), x)
    compared = [a for a in ref if a not in ("input", "pred")]
    assert set(compared) <= set(got), f"reference arrays without a hook: {set(compared) - set(got)}"
    tolerance = meta["tolerance"]
    for array in compared:
        assert_close_rel(leading_entries(got[array], ref[array]), ref[array], tolerance.get(array, 1e-4),
                         f"{case} {array}")

    full = F.interpolate(torch.from_numpy(got["output"]), size=x.shape[2:], mode="bilinear", align_corners=False)
    top2 = full.topk(2, dim=1).values
    decided = (top2[:, 0] - top2[:, 1] >= NEAR_TIE).numpy()
    agree = full.argmax(1).numpy() == ref["pred"]
    assert agree[decided].all(), f"{case}: argmax differs on {(~agree[decided]).sum()} decided pixels"
    assert decided.mean() > 0.99
