"""The contract every registered network keeps, checked over the whole registry.

``test_contract_structure`` (every network, built on PyTorch's ``meta`` device: keys and shapes, no
arithmetic, milliseconds each): the network builds in eval mode from its registry entry; its default
configuration is complete; its own ``state_dict`` fits a fresh build strictly and a missing key is
named; it accepts a valid ISR setting and rejects invalid ones with the reason -- a setting it cannot
express, and one whose pool exceeds a feature map at a small input, naming the size it needs; a network
without ISR (HRViT, ViT-CoMer: no scheme) takes ratio 1 as a no-op and refuses any other with "ISR does
not apply to <its attention>"; DPT has no ISR interface at all.

``test_contract_runs`` (real weights and arithmetic): outputs of the promised shape at two input sizes
(batch 2 at the first), finite; a valid ISR setting changes the output and ratio 1 restores it; for
the smallest network of each SRA family and attention kind (``EXPORTED``) an ONNX export with the
expected output shape that ONNX Runtime reproduces (EDAFormer, DPT, HRViT and ViT-CoMer have their own
export tests: test_onnx.py, test_onnx_hrvit_vit_comer.py). By default it runs the smallest network of
each family and attention kind (``RUN_BY_DEFAULT``); every other network is marked ``slow`` and runs
(and is exported) with ``DENSE_PERCEPTION_SLOW_TESTS=1`` -- the large ones take tens of seconds each on
a 2-core CPU.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from golden_cases import assert_close_rel
from dense_perception.engines.export import export_onnx
from dense_perception.engines.onnx_engine import OnnxRuntimeEngine
from dense_perception.networks import ISRSetting, available_networks, build_network, network_spec
from dense_perception.networks.checkpoint import key_mismatch

SIZES = ((64, 64), (96, 128))
BATCHES = (2, 1)
#: Networks exported by default: the smallest of each SRA family and attention kind.
EXPORTED = {"segformer_b0_ade20k", "pvt_v2_b0_fpn_ade20k", "pvt_v2_b2_li_fpn_ade20k", "pvt_tiny_fpn_ade20k"}
#: Networks run with real weights by default: the smallest of each family and attention kind.
RUN_BY_DEFAULT = EXPORTED | {"edaformer_t_ade20k", "hrvit_b1_segformer_ade20k", "vit_comer_t_upernet_ade20k"}
SLOW = os.environ.get("DENSE_PERCEPTION_SLOW_TESTS") == "1"
SLOW_REASON = ("another variant of a family run by default: set DENSE_PERCEPTION_SLOW_TESTS=1 to run it "
               "(its structure is checked on meta)")


def _expected_shape(name: str, batch: int, height: int, width: int) -> tuple[int, ...]:
    spec = network_spec(name)
    if spec.task == "depth":
        return (batch, height, width)
    if spec.isr is None:  # HRViT, ViT-CoMer: stride 4 (the sizes here are multiples of 32)
        return (batch, spec.num_classes, height // 4, width // 4)
    # logits on the stage-1 grid (stride 4), EDAFormer's on the stage-2 grid (stride 8)
    level = 1 if spec.family == "edaformer" else 0
    return (batch, spec.num_classes, *spec.isr.feature_map_sizes(height, width)[level])


def _forward(net: torch.nn.Module, height: int, width: int, batch: int = 1) -> torch.Tensor:
    device = next(net.parameters()).device
    x = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(height * width)).to(device)
    with torch.no_grad():
        return net(x)


def _meta(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        return build_network(name)


def _runs(name: str):  # noqa: ANN202 - a pytest parameter
    return name if name in RUN_BY_DEFAULT else pytest.param(name, marks=pytest.mark.slow)


@pytest.mark.parametrize("name", available_networks())
def test_contract_structure(name: str) -> None:
    spec = network_spec(name)
    net = _meta(name)
    assert not net.training and net.name == name

    # default configuration: what the serving layers read
    assert spec.task in ("segmentation", "depth") and spec.dataset and spec.description
    assert spec.input_size and spec.preprocessing and [e.network for e in spec.weights] == [name]
    if spec.task == "segmentation":
        assert net.num_classes == spec.num_classes
        assert spec.inference is not None and spec.inference.mode in ("whole", "slide")
    else:
        assert spec.output is not None and net.output_units == spec.output

    # its own weights fit a fresh build strictly; a missing key is named (load_weights' message, with
    # its guess of the network the weights fit, is tested per family: test_sra, test_hrvit, ...)
    state = net.state_dict()
    fresh = _meta(name)
    assert key_mismatch(fresh, state) is None
    fresh.load_state_dict(state, strict=True, assign=True)
    first = next(iter(state))
    assert f"1 missing: {first}" in key_mismatch(fresh, {k: v for k, v in state.items() if k != first})

    # ISR: a valid setting is served; invalid ones are refused with the reason, changing nothing
    if spec.task == "depth":
        assert spec.isr is None and not hasattr(net, "set_isr")
        return
    if spec.isr is None:
        assert net.isr is None and net.set_isr(1) is None and net.isr is None
        net.check_isr(*SIZES[1])
        with pytest.raises(ValueError, match=r"^ISR does not apply to .+: .+ has no key/value pooling ratios"):
            net.set_isr(ratio=2)
        return
    assert net.isr_scheme == spec.isr and spec.isr.is_training(net.isr)
    reduced = net.set_isr(ratio=2)
    assert reduced == spec.isr.from_ratio(2) == net.isr
    net.check_isr(*SIZES[1])
    with pytest.raises(ValueError, match=r"does not fit a 64x64 input \(it needs at least \d+x\d+\)"):
        net.set_isr(ratio=8)
        net.check_isr(64, 64)  # what the forward checks first
    with pytest.raises(ValueError, match="ISR ratio must be a positive integer"):
        net.set_isr(ratio=0)
    with pytest.raises(ValueError, match="ISR"):
        net.set_isr(ISRSetting(reduced.encoder, (1, 2, 3, 4, 5)))
    assert net.isr == spec.isr.from_ratio(8), "a refused setting changes nothing"
    assert net.set_isr(ratio=1) == spec.isr.training == net.isr


@pytest.mark.parametrize("name", [_runs(name) for name in available_networks()])
def test_contract_runs(name: str, tmp_path: Path) -> None:
    if not (SLOW or name in RUN_BY_DEFAULT):
        pytest.skip(SLOW_REASON)
    spec = network_spec(name)
    net = build_network(name)
    outputs = {}
    for (height, width), batch in zip(SIZES, BATCHES):
        outputs[height, width] = out = _forward(net, height, width, batch)
        assert tuple(out.shape) == _expected_shape(name, batch, height, width) and torch.isfinite(out).all()
    if spec.isr is not None:
        net.set_isr(ratio=2)
        assert not torch.equal(outputs[SIZES[1]], _forward(net, *SIZES[1])), "ISR changes the output"
        net.set_isr(ratio=1)
        assert torch.equal(outputs[SIZES[1]], _forward(net, *SIZES[1])), "ratio 1 restores the output"

    if name not in EXPORTED and not SLOW:
        return
    height, width = SIZES[0]
    path = export_onnx(net, tmp_path / f"{name}.onnx", height, width)
    graph = onnx.load(str(path))
    dims = [d.dim_value for d in graph.graph.output[0].type.tensor_type.shape.dim]
    assert tuple(dims) == _expected_shape(name, 1, height, width)
    x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = net(x).numpy()
    got = OnnxRuntimeEngine(path, threads=2).infer(x).numpy()
    assert_close_rel(got, expected, 1e-4, f"{name} ONNX Runtime vs torch")
    assert np.isfinite(got).all()
