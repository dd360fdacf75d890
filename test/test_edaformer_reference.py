"""EDAFormer against golden outputs of the official code (shared/reference/edaformer)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close_rel, load_case, reference_cases
from dense_perception.engines.onednn import onednn_linear_available
from dense_perception.engines.torch_engine import TorchEngine
from dense_perception.networks import ISRSetting, build_network, load_weights
from dense_perception.networks.common import fill_reference_weights

CASES = reference_cases("edaformer")


@pytest.mark.parametrize("case", CASES)
def test_matches_official_output(case: str) -> None:
    meta, ref = load_case("edaformer", case)
    settings = meta["settings"]
    net = build_network(settings["network"])

    ours = [[k, list(v.shape)] for k, v in sorted(net.state_dict().items())]
    assert ours == [[k, shape] for k, shape, _ in meta["keys"]], "state_dict keys/shapes differ from official"

    load_weights(net, fill_reference_weights(net))
    net.set_isr(encoder=settings["isr"]["encoder"], decoder=settings["isr"]["decoder"])
    assert list(net.isr.encoder) == settings["isr"]["encoder"]
    assert list(net.isr.decoder) == settings["isr"]["decoder"]

    x = torch.from_numpy(ref["input"])
    with torch.no_grad():
        logits = net(x)
        stages = net.forward_features(x)
    tolerance = meta.get("tolerance", {})
    assert_close_rel(logits.numpy(), ref["output"], tolerance.get("output", 1e-4), f"{case} output")
    for i, stage in enumerate(stages, start=1):
        name = f"backbone_stage{i}"
        if name in ref:
            assert_close_rel(stage.numpy(), ref[name], tolerance.get(name, 1e-5), f"{case} {name}")
    if "pred" in ref:
        full = F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)
        agree = (full.argmax(1).numpy() == ref["pred"]).mean()
        assert agree == 1.0, f"{case}: argmax agrees on {agree:.6f} of pixels"


@pytest.mark.parametrize("case", CASES)
def test_torch_engine_matches_official_output(case: str) -> None:
    """The CPU torch engine as shipped (oneDNN linear layers, tuned malloc) keeps the case's tolerance."""
    meta, ref = load_case("edaformer", case)
    settings = meta["settings"]
    net = build_network(settings["network"])
    load_weights(net, fill_reference_weights(net))
    engine = TorchEngine(net, "cpu")
    engine.set_isr(ISRSetting(tuple(settings["isr"]["encoder"]), tuple(settings["isr"]["decoder"])))
    assert engine.describe()["onednn_linears"] == (66 if onednn_linear_available() else 0)
    logits = engine.infer(torch.from_numpy(ref["input"]))
    assert_close_rel(logits.numpy(), ref["output"], meta.get("tolerance", {}).get("output", 1e-4),
                     f"{case} output (torch engine)")
