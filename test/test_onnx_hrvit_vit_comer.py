"""ONNX export of HRViT and ViT-CoMer (with the shared UperNet head) at two input sizes each: ONNX
Runtime matches torch, every operator parses in TensorRT 10, no ISR is stamped.

About a minute on 2 cores: tracing these graphs (HRViT-b1 ~1500 modules) dominates. Sizes are small
but odd on purpose: HRViT 93×125 pads every stripe window and has 3-pixel stride-32 maps; ViT-CoMer
64×64 has a 2×2 pyramid-pooling input (bins 3 and 6 larger than the map) and 96×128 is non-square.
"""
from __future__ import annotations

import collections

import onnx
import onnxruntime as ort
import pytest
import torch

from golden_cases import assert_close_rel
from dense_perception.engines.export import export_onnx, read_graph_info
from dense_perception.engines.tensorrt_ops import unsupported_ops
from dense_perception.networks import build_network, load_weights
from dense_perception.networks.common import fill_reference_weights

CASES = [
    ("hrvit_b1_segformer_ade20k", (64, 64)), ("hrvit_b1_segformer_ade20k", (93, 125)),
    ("vit_comer_t_upernet_ade20k", (64, 64)), ("vit_comer_t_upernet_ade20k", (96, 128)),
]
#: ONNX Runtime vs torch, relative to max(1, max|torch|); measured ≤ 2e-6.
RELATIVE = 1e-5


@pytest.fixture(scope="module")
def networks() -> dict[str, torch.nn.Module]:
    built = {}
    for name in sorted({name for name, _ in CASES}):
        net = build_network(name)
        load_weights(net, fill_reference_weights(net))
        built[name] = net
    return built


@pytest.mark.parametrize(("name", "size"), CASES)
def test_export_matches_torch_and_parses_in_tensorrt(name: str, size: tuple[int, int], networks, tmp_path) -> None:
    net = networks[name]
    height, width = size
    x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(height + width))
    with torch.no_grad():  # first: the trace below then reuses oneDNN's kernels for these shapes
        expected = net(x).numpy()
    path = export_onnx(net, tmp_path / f"{name}.onnx", height, width)
    model = onnx.load(str(path))
    assert unsupported_ops(model) == []
    ops = collections.Counter(node.op_type for node in model.graph.node)
    if name.startswith("vit_comer"):
        assert ops["GridSample"] == 12 * 3  # 12 deformable attentions × 3 levels
    assert read_graph_info(model).isr == ""  # stamped "no ISR"

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert out.shape == (1, 150, -(-height // 4), -(-width // 4))
    assert_close_rel(out, expected, RELATIVE, f"{name} {height}x{width} onnxruntime vs torch")
