"""SegFormer / PVTv2 against golden outputs of the official code (shared/reference/sra).

Each case is built through ``build_network(settings.network)`` with the official keys, loaded with the
seeded weight rule, set to the case's ISR setting, and compared with every stored array at the module
the case names (``compare_hooks``: that module's output; ``compare_inputs``: its first input).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import assert_close_rel, load_case, reference_root
from dense_perception.networks import build_network, load_weights
from dense_perception.networks.common import fill_reference_weights

FOLDER = reference_root() / "sra"
CASES = sorted(p.name[: -len(".keys.json")] for p in FOLDER.glob("*.keys.json"))
pytestmark = pytest.mark.skipif(not CASES, reason=f"no SRA golden cases in {FOLDER} (../shared/reference/sra "
                                                  f"or $DENSE_PERCEPTION_REFERENCE/sra is missing)")


def _record(net: nn.Module, meta: dict) -> tuple[dict[str, torch.Tensor], list]:
    """Hooks storing each compared module's output or first input under the array's name."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for array, path in meta.get("compare_hooks", {}).items():
        handles.append(net.get_submodule(path).register_forward_hook(
            lambda _m, _i, out, array=array: seen.__setitem__(array, out.detach().clone())))
    for array, path in meta.get("compare_inputs", {}).items():
        handles.append(net.get_submodule(path).register_forward_hook(
            lambda _m, inputs, _o, array=array: seen.__setitem__(array, inputs[0].detach().clone())))
    return seen, handles


def _leading(ours: torch.Tensor, ref_shape: tuple[int, ...]) -> torch.Tensor:
    """The stored part of a tensor: leading entries of dim 1 (channels of a map, tokens of a token array)."""
    return ours[:, : ref_shape[1]]


@pytest.mark.parametrize("case", CASES or ["(none)"])
def test_matches_official_output(case: str) -> None:
    meta, ref = load_case("sra", case)
    settings = meta["settings"]
    net = build_network(settings["network"])

    ours = [[k, list(v.shape)] for k, v in sorted(net.state_dict().items())]
    assert ours == [[k, shape] for k, shape, _ in meta["keys"]], "state_dict keys/shapes differ from official"

    load_weights(net, fill_reference_weights(net))
    if settings["isr"] is not None:
        net.set_isr(encoder=settings["isr"]["encoder"])
        assert list(net.isr.encoder) == settings["isr"]["encoder"]
    else:
        assert net.isr_scheme.is_training(net.isr)

    seen, handles = _record(net, meta)
    x = torch.from_numpy(ref["input"])
    try:
        with torch.no_grad():
            logits = net(x)
    finally:
        for handle in handles:
            handle.remove()
    tolerance = meta.get("tolerance", {})
    checked = ["output"]
    assert_close_rel(_leading(logits, ref["output"].shape).numpy(), ref["output"], tolerance["output"],
                     f"{case} output")
    for array, tensor in seen.items():
        assert_close_rel(_leading(tensor, ref[array].shape).numpy(), ref[array], tolerance.get(array, 1e-4),
                         f"{case} {array}")
        checked.append(array)
    expected = {a for a in ref if a not in ("input", "pred")}
    assert set(checked) == expected, f"arrays not compared: {sorted(expected - set(checked))}"

    full = F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)
    top2 = full.topk(2, dim=1).values
    decided = (top2[:, 0] - top2[:, 1] >= 1e-5).numpy()  # near-ties may flip (the case's pred_notes)
    agree = (full.argmax(1).numpy() == ref["pred"])[decided].mean()
    assert agree == 1.0, f"{case}: argmax agrees on {agree:.6f} of the decided pixels"
