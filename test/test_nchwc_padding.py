"""Widening odd depthwise widths for ONNX Runtime's blocked CPU layout (engines/nchwc_padding.py)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from dense_perception.engines.nchwc_padding import pad_depthwise_widths

C_IN, HIDDEN, H, W = 8, 13, 6, 5


def _weights(rng: np.random.Generator, shape: tuple[int, ...], name: str, dtype=np.float32) -> TensorProto:
    return numpy_helper.from_array(rng.standard_normal(shape).astype(dtype), name)


def ffn_model(hidden: int = HIDDEN, *, hidden_output: bool = False, also_read_by: str | None = None,
              per_channel_scale: bool = False, shared_fc1: bool = False,
              dtype=np.float32) -> onnx.ModelProto:
    """fc1 (1x1) -> Relu -> depthwise 3x3 -> exact GELU as the exporter writes it -> fc2 (1x1)."""
    rng = np.random.default_rng(0)
    inits = [
        _weights(rng, (hidden, C_IN, 1, 1), "w1", dtype), _weights(rng, (hidden,), "b1", dtype),
        _weights(rng, (hidden, 1, 3, 3), "wd", dtype), _weights(rng, (hidden,), "bd", dtype),
        _weights(rng, (C_IN, hidden, 1, 1), "w2", dtype), _weights(rng, (C_IN,), "b2", dtype),
        numpy_helper.from_array(np.array(2 ** 0.5, dtype), "sqrt2"),
        numpy_helper.from_array(np.array(1.0, dtype), "one"),
        numpy_helper.from_array(np.array(0.5, dtype), "half"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["h1"], name="fc1"),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu"),
        helper.make_node("Conv", ["r1", "wd", "bd"], ["d"], name="dw", group=hidden, pads=[1, 1, 1, 1]),
        helper.make_node("Div", ["d", "sqrt2"], ["g1"], name="div"),
        helper.make_node("Erf", ["g1"], ["g2"], name="erf"),
        helper.make_node("Add", ["g2", "one"], ["g3"], name="add"),
        helper.make_node("Mul", ["d", "g3"], ["g4"], name="mul"),
        helper.make_node("Mul", ["g4", "half"], ["g"], name="mul_half"),
        helper.make_node("Conv", ["g", "w2", "b2"], ["y"], name="fc2"),
    ]
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    outputs = [helper.make_tensor_value_info("y", elem, [1, C_IN, H, W])]
    if per_channel_scale:  # a per-channel constant mixes nothing but needs a wider constant: left alone
        inits.append(_weights(rng, (1, hidden, 1, 1), "scale", dtype))
        nodes[-1:-1] = [helper.make_node("Mul", ["g", "scale"], ["gs"], name="scale")]
        nodes[-1].input[0] = "gs"
    if hidden_output:
        outputs.append(helper.make_tensor_value_info("d", elem, [1, hidden, H, W]))
    if also_read_by:
        nodes.append(helper.make_node(also_read_by, ["g"], ["side"], name="side", axes=[1])
                     if also_read_by == "ReduceMean" else helper.make_node(also_read_by, ["g"], ["side"]))
        side = ("side", TensorProto.INT64, [4]) if also_read_by == "Shape" else ("side", elem, [1, 1, H, W])
        outputs.append(helper.make_tensor_value_info(*side))
    if shared_fc1:  # a second conv reads fc1's weights
        nodes.append(helper.make_node("Conv", ["x", "w1"], ["other"], name="other"))
        outputs.append(helper.make_tensor_value_info("other", elem, [1, hidden, H, W]))
    graph = helper.make_graph(nodes, "ffn", [helper.make_tensor_value_info("x", elem, [1, C_IN, H, W])],
                              outputs, inits,
                              value_info=[helper.make_tensor_value_info("d", elem, [1, hidden, H, W])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    return {t.name: list(t.dims) for t in model.graph.initializer}


def test_widened_ffn_is_the_same_function():
    model = ffn_model()
    x = np.random.default_rng(1).standard_normal((1, C_IN, H, W)).astype(np.float32)
    (expected,) = run(model, x)
    assert pad_depthwise_widths(model, multiple=16) == 1
    dims = shapes(model)
    assert dims["w1"] == [16, C_IN, 1, 1] and dims["b1"] == [16]
    assert dims["wd"] == [16, 1, 3, 3] and dims["bd"] == [16]
    assert dims["w2"] == [C_IN, 16, 1, 1] and dims["b2"] == [C_IN]  # fc2's outputs keep their width
    dw = next(n for n in model.graph.node if n.name == "dw")
    assert helper.get_attribute_value(next(a for a in dw.attribute if a.name == "group")) == 16
    assert [v.name for v in model.graph.value_info] == []  # the stale 13-channel shape of "d" is gone
    onnx.checker.check_model(model, full_check=True)
    w2 = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w2"))
    assert not w2[:, HIDDEN:].any()  # the new channels are read with zero weights
    (widened,) = run(model, x)
    np.testing.assert_allclose(widened, expected, rtol=1e-5, atol=1e-6)
    assert pad_depthwise_widths(model, multiple=16) == 0  # already a multiple: nothing more to do


def test_multiple_of_eight_pads_less():
    model = ffn_model()
    assert pad_depthwise_widths(model, multiple=8) == 1
    assert shapes(model)["wd"] == [16, 1, 3, 3]
    model = ffn_model(hidden=24)
    assert pad_depthwise_widths(model, multiple=8) == 0


@pytest.mark.parametrize("variant", [
    {"hidden_output": True},          # the hidden tensor is a graph output: its width is visible
    {"also_read_by": "ReduceMean"},   # read by an op that mixes channels
    {"also_read_by": "Shape"},        # read by an op that would see the new width
    {"per_channel_scale": True},      # an element-wise op with a per-channel (not scalar) constant
    {"shared_fc1": True},             # fc1's weights are read by another node too
    {"dtype": np.float16},            # no blocked layout for fp16: not worth changing
], ids=lambda v: next(iter(v)))
def test_chains_it_cannot_prove_safe_are_left_alone(variant):
    model = ffn_model(**variant)
    before = model.SerializeToString()
    assert pad_depthwise_widths(model, multiple=16) == 0
    assert model.SerializeToString() == before
