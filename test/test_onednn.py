"""oneDNN linear layers for CPU inference: same results, same parameters, stock path where it must be."""
from __future__ import annotations

import io

import onnx
import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from dense_perception.engines.onednn import OneDNNLinear, onednn_linear_available, use_onednn_linear
from dense_perception.networks import build_network

needs_onednn = pytest.mark.skipif(not onednn_linear_available(), reason="this torch build has no oneDNN linear")


def _ran_onednn(fn) -> bool:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return any("_linear_pointwise" in event.name for event in prof.events())


@needs_onednn
@pytest.mark.parametrize("shape", [(5, 32), (2, 77, 32), (2, 3, 9, 32)])
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_equals_linear(shape: tuple[int, ...], bias: bool) -> None:
    torch.manual_seed(0)
    plain = nn.Linear(32, 121, bias=bias)
    swapped = OneDNNLinear.sharing(plain)
    assert swapped.weight is plain.weight and swapped.bias is plain.bias
    x = torch.randn(*shape)
    with torch.inference_mode():
        expected = plain(x)
        assert _ran_onednn(lambda: swapped(x))
        torch.testing.assert_close(swapped(x), expected, rtol=1e-5, atol=1e-5)
        wide = torch.randn(*shape[:-1], 64)[..., ::2]  # a strided view, not contiguous
        torch.testing.assert_close(swapped(wide), plain(wide), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_stock_path_for_autograd_export_and_other_dtypes() -> None:
    layer = OneDNNLinear.sharing(nn.Linear(8, 4))
    x = torch.randn(3, 8, requires_grad=True)
    assert not _ran_onednn(lambda: layer(x).sum().backward())
    assert x.grad is not None and layer.weight.grad is not None
    with torch.inference_mode():
        for odd in (torch.randn(8), torch.randn(0, 8)):  # one row without a batch; no rows
            assert not _ran_onednn(lambda: layer(odd))
            torch.testing.assert_close(layer(odd), torch.nn.functional.linear(odd, layer.weight, layer.bias))
        assert not _ran_onednn(lambda: layer.double()(torch.randn(3, 8, dtype=torch.float64)))
    buffer = io.BytesIO()
    with torch.no_grad():  # as the exporter runs: only the export itself sends it to the stock path
        torch.onnx.export(OneDNNLinear.sharing(nn.Linear(8, 4)).eval(), (torch.randn(2, 8),), buffer,
                          dynamo=False)
    ops = {node.op_type for node in onnx.load_from_string(buffer.getvalue()).graph.node}
    assert ops <= {"Gemm", "MatMul", "Add"}, ops


@needs_onednn
def test_swap_keeps_parameters_and_names_and_outputs() -> None:
    torch.manual_seed(0)
    net = build_network("edaformer_t_ade20k").eval()
    before = {k: v.data_ptr() for k, v in net.state_dict().items()}
    x = torch.randn(1, 3, 128, 96)
    with torch.inference_mode():
        expected = net(x)
        assert use_onednn_linear(net) == 66  # every EDAFormer-T linear is at most 256 wide on one side
        got = net(x)
    assert {k: v.data_ptr() for k, v in net.state_dict().items()} == before
    assert sum(isinstance(m, OneDNNLinear) for m in net.modules()) == 66
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
    assert use_onednn_linear(net) == 0  # already swapped


def test_wide_layers_keep_mkl() -> None:
    net = build_network("dpt_hybrid_midas")
    assert use_onednn_linear(net) == 0  # the ViT's layers are 768 wide or more
    assert not any(isinstance(m, OneDNNLinear) for m in net.modules())
