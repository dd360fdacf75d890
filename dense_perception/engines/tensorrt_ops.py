"""Which ONNX operators the TensorRT ONNX parser accepts: the one list the export checks against.

Source: onnx-tensorrt ``docs/operators.md``, "Operator Support Matrix", rows marked ``Y``, for TensorRT 10:
https://github.com/onnx/onnx-tensorrt/blob/10.1-GA/docs/operators.md
(branch ``10.1-GA``, commit 96e781103cfc4adf4a6bb557e94bac8e693f6f4c, "ONNX-TensorRT 10.1 GA release",
2024-06-17; the file says TensorRT 10 parses opsets 9 to 20). The rows marked ``N`` (AffineGrid, the
Bitwise*, the Sequence*, the String*, DFT/STFT, the integer and quantised linear ops, ...) are absent here.

Besides the operator names, the matrix restricts a few operators; :func:`unsupported_ops` checks the
restrictions that a vision graph can plausibly hit (Resize modes, axes that must be initializers).
Operators outside the default ONNX domain (``com.microsoft`` contrib ops, for instance) are never parsed
without a plugin, so they count as unsupported.
"""
from __future__ import annotations

from typing import Iterator

import onnx

#: Where :data:`TENSORRT_ONNX_OPS` was read from.
SOURCE = ("https://github.com/onnx/onnx-tensorrt/blob/10.1-GA/docs/operators.md "
          "(commit 96e781103cfc4adf4a6bb557e94bac8e693f6f4c)")

#: Operators of the default ONNX domain that the TensorRT 10 ONNX parser supports.
TENSORRT_ONNX_OPS: frozenset[str] = frozenset({
    "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin",
    "Asinh", "Atan", "Atanh", "AveragePool", "BatchNormalization", "Cast", "CastLike", "Ceil",
    "Celu", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "Cos",
    "Cosh", "CumSum", "DeformConv", "DepthToSpace", "DequantizeLinear", "Div", "Dropout", "Einsum",
    "Elu", "Equal", "Erf", "Exp", "Expand", "EyeLike", "Flatten", "Floor",
    "Gather", "GatherElements", "GatherND", "Gelu", "Gemm", "GlobalAveragePool", "GlobalLpPool",
    "GlobalMaxPool", "Greater", "GreaterOrEqual", "GridSample", "GroupNormalization", "GRU", "Hardmax",
    "HardSigmoid", "HardSwish", "Identity", "If", "ImageScaler", "InstanceNormalization", "IsInf", "IsNaN",
    "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax", "Loop",
    "LpNormalization", "LpPool", "LRN", "LSTM", "MatMul", "Max", "MaxPool", "Mean",
    "MeanVarianceNormalization", "Min", "Mish", "Mod", "Mul", "Neg", "NonMaxSuppression", "NonZero",
    "Not", "OneHot", "Or", "Pad", "ParametricSoftplus", "Pow", "PRelu", "QuantizeLinear", "RandomNormal",
    "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Range", "Reciprocal", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum",
    "ReduceSumSquare", "Relu", "Reshape", "Resize", "ReverseSequence", "RNN", "RoiAlign", "Round",
    "ScaledTanh", "Scan", "Scatter", "ScatterElements", "ScatterND", "Selu", "Shape", "Shrink",
    "Sigmoid", "Sign", "Sin", "Sinh", "Size", "Slice", "Softmax", "Softplus", "Softsign", "SpaceToDepth",
    "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tan", "Tanh", "ThresholdedRelu", "Tile", "TopK",
    "Transpose", "Trilu", "Unsqueeze", "Upsample", "Where", "Xor",
})

#: Resize attribute values the parser accepts (matrix row "Resize"); antialiasing is unsupported.
RESIZE_MODES = frozenset({"nearest", "linear"})
RESIZE_COORDINATE_MODES = frozenset({
    "half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners",
})

#: Inputs that must be initializers (or Constant outputs): operator -> input index ("axes" rows).
INITIALIZER_INPUTS: dict[str, int] = {"Slice": 3, "Squeeze": 1, "Pad": 3, "CumSum": 1}

_DEFAULT_DOMAINS = ("", "ai.onnx")


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node, including those inside If/Loop/Scan bodies."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _all_nodes(sub)


def _attribute(node: onnx.NodeProto, name: str, default: object) -> object:
    for attr in node.attribute:
        if attr.name == name:
            value = onnx.helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _constant_names(model: onnx.ModelProto) -> set[str]:
    names = {init.name for init in model.graph.initializer}
    names.update(out for node in _all_nodes(model.graph) if node.op_type == "Constant" for out in node.output)
    return names


def _restriction(node: onnx.NodeProto, constants: set[str]) -> str | None:
    """Why the parser would refuse this (supported) node, or None."""
    if node.op_type == "Resize":
        mode = _attribute(node, "mode", "nearest")
        coord = _attribute(node, "coordinate_transformation_mode", "half_pixel")
        if mode not in RESIZE_MODES or coord not in RESIZE_COORDINATE_MODES or _attribute(node, "antialias", 0):
            return f"Resize(mode={mode}, coordinate_transformation_mode={coord})"
    index = INITIALIZER_INPUTS.get(node.op_type)
    if index is not None and len(node.input) > index and node.input[index] and node.input[index] not in constants:
        return f"{node.op_type}(axes computed at run time)"
    return None


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """Sorted operators of ``model`` the TensorRT 10 ONNX parser would refuse; ``[]`` when all parse.

    Entries are operator names (``"com.microsoft::FusedMatMul"`` outside the default domain), or an
    operator with the restriction it breaks, e.g. ``"Resize(mode=cubic, ...)"``.
    """
    constants = _constant_names(model)
    problems: set[str] = set()
    for node in _all_nodes(model.graph):
        if node.domain not in _DEFAULT_DOMAINS:
            problems.add(f"{node.domain}::{node.op_type}")
        elif node.op_type not in TENSORRT_ONNX_OPS:
            problems.add(node.op_type)
        else:
            reason = _restriction(node, constants)
            if reason:
                problems.add(reason)
    return sorted(problems)
