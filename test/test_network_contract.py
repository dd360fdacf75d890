"""The contract every registered network keeps, checked over the whole registry.

``test_contract_structure`` (every network, on PyTorch's ``meta`` device: shapes only, no arithmetic):
the network builds in eval mode from its registry entry; its default configuration is complete; its own
``state_dict`` loads strictly into a fresh build and a missing key is named; it runs at two input sizes
with the output shape its task promises; it accepts a valid ISR setting and rejects invalid ones with
the reason (or has no ISR at all).

``test_contract_runs`` (real weights and arithmetic): finite outputs at both sizes, a valid ISR setting
changes the output and ratio 1 restores it, and -- for the smallest network of each family and attention
kind (``EXPORTED``) -- an ONNX export with the expected output shape that ONNX Runtime reproduces.
Networks above ``LIGHT_PARAMETERS`` parameters (SegFormer-B3…B5, PVTv2-b3…b5, PVT-M/L, DPT) take tens
of seconds each on a 2-core CPU: they run, and every network is exported, only with
``DENSE_PERCEPTION_SLOW_TESTS=1``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from conftest import assert_close_rel
from dense_perception.engines.export import export_onnx
from dense_perception.engines.onnx_engine import OnnxRuntimeEngine
from dense_perception.networks import ISRSetting, available_networks, build_network, load_weights, network_spec
from dense_perception.networks.checkpoint import CheckpointError, key_mismatch

SIZES = ((64, 64), (96, 128))
BATCHES = (2, 1)
#: Networks exported by default: the smallest of each SRA family and attention kind (EDAFormer and DPT
#: have their own export tests in test_onnx.py).
EXPORTED = {"segformer_b0_ade20k", "pvt_v2_b0_fpn_ade20k", "pvt_v2_b2_li_fpn_ade20k", "pvt_tiny_fpn_ade20k"}
#: Networks up to this many parameters run with real weights by default.
LIGHT_PARAMETERS = 30_000_000
SLOW = os.environ.get("DENSE_PERCEPTION_SLOW_TESTS") == "1"
SLOW_REASON = "a large variant: set DENSE_PERCEPTION_SLOW_TESTS=1 to run it (its structure is checked on meta)"


def _expected_shape(name: str, batch: int, height: int, width: int) -> tuple[int, ...]:
    spec = network_spec(name)
    if spec.task == "depth":
        return (batch, height, width)
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
    else:
        assert spec.output is not None and net.output_units == spec.output

    # its own weights load strictly into a fresh build; a missing key is named
    state = net.state_dict()
    fresh = _meta(name)
    assert key_mismatch(fresh, state) is None
    fresh.load_state_dict(state, strict=True, assign=True)
    first = next(iter(state))
    with pytest.raises(CheckpointError, match=rf"1 missing: {first.replace('.', '[.]')}"):
        load_weights(fresh, {k: v for k, v in state.items() if k != first})

    # two input sizes (batch 2 at the first)
    for (height, width), batch in zip(SIZES, BATCHES):
        assert tuple(_forward(net, height, width, batch).shape) == _expected_shape(name, batch, height, width)

    # ISR: a valid setting is served; invalid ones are refused with the reason, changing nothing
    if spec.isr is None:
        assert not hasattr(net, "set_isr")
        return
    assert net.isr_scheme == spec.isr and spec.isr.is_training(net.isr)
    reduced = net.set_isr(ratio=2)
    assert reduced == spec.isr.from_ratio(2) == net.isr
    assert tuple(_forward(net, *SIZES[1]).shape) == _expected_shape(name, 1, *SIZES[1])
    with pytest.raises(ValueError, match=r"does not fit a 64x64 input \(it needs at least \d+x\d+\)"):
        net.set_isr(ratio=8)
        _forward(net, 64, 64)
    with pytest.raises(ValueError, match="ISR ratio must be a positive integer"):
        net.set_isr(ratio=0)
    with pytest.raises(ValueError, match="ISR"):
        net.set_isr(ISRSetting(reduced.encoder, (1, 2, 3, 4, 5)))
    assert net.isr == spec.isr.from_ratio(8), "a refused setting changes nothing"
    assert net.set_isr(ratio=1) == spec.isr.training == net.isr


def _is_light(name: str) -> bool:
    return sum(p.numel() for p in _meta(name).parameters()) <= LIGHT_PARAMETERS


@pytest.mark.parametrize("name", available_networks())
def test_contract_runs(name: str, tmp_path: Path) -> None:
    if not (SLOW or _is_light(name)):
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
