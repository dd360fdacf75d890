"""Widen odd channel counts so ONNX Runtime's CPU provider runs them in its blocked (NCHWc) layout.

On x86 CPUs, ONNX Runtime rewrites convolutions into MLAS's NCHWc layout (blocks of 8 channels with
AVX2, 16 with AVX-512), but its ``NchwcTransformer`` leaves a grouped convolution whose channel count is
not a multiple of the block, and a convolution whose input channel count is not, in plain NCHW, with
layout reorders around them. EDAFormer's feed-forward blocks are such a case: the hidden widths are
``floor(3.8 × width)`` (121, 243, 486, 972 for EDAFormer-T), so each FFN's depthwise 3×3 and fc2 ran
unblocked; widened, EDAFormer-T's fp32 forward at 512×512 is 1.14-1.2× faster (bench/RESULTS.md).

:func:`pad_depthwise_widths` widens such a hidden tensor with zero channels, in memory, at session
creation: the producing convolution gets zero filters (and zero biases), the depthwise convolution zero
filters, and every consuming convolution zero weights for the new input channels. The ops between them
must be element-wise with scalar constants, so the new channels never mix into the real ones, and the
consumers' zero weights keep them out of the result: the output is the same function (equal up to float
summation order). The file on disk -- the exported network, which TensorRT and other tools read -- is
not changed.
"""
from __future__ import annotations

import math
import platform
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

#: Channel multiple the widths are padded to: MLAS's NCHWc block is 8 (AVX2) or 16 (AVX-512); 16 fits both.
NCHWC_MULTIPLE = 16

#: Operators that act on each element alone (with scalar constants), so they keep channels apart.
ELEMENTWISE = frozenset({"Relu", "Gelu", "Erf", "Add", "Sub", "Mul", "Div", "Sigmoid", "Tanh",
                         "LeakyRelu", "Clip", "HardSigmoid", "HardSwish", "Neg", "Abs", "Exp", "Sqrt"})


def nchwc_layout_used() -> bool:
    """Whether ONNX Runtime's CPU provider uses the NCHWc layout on this machine (x86 builds of MLAS)."""
    return platform.machine().lower() in {"x86_64", "amd64", "i386", "i686", "x86"}


def _group(node: onnx.NodeProto) -> int:
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)


@dataclass
class _Widening:
    """One hidden tensor to widen: the convolutions whose weights change, the tensors that get wider."""

    producer: onnx.NodeProto
    depthwise: onnx.NodeProto
    consumers: list[onnx.NodeProto]
    tensors: set[str]
    width: int
    extra: int


class _GraphIndex:
    """Producers, consumers and initializers of one graph."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.initializers = {t.name: t for t in graph.initializer}
        self.nodes = list(graph.node)  # held, so id() names each node for the index's lifetime
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.nodes:
            for name in node.input:
                self.consumers[name].append(node)
            for name in node.output:
                self.producer[name] = node
        self.outputs = {o.name for o in graph.output}

    def private_initializer(self, node: onnx.NodeProto, position: int) -> onnx.TensorProto | None:
        """``node``'s input at ``position`` when it is an initializer that no other node reads."""
        if len(node.input) <= position or not node.input[position]:
            return None
        tensor = self.initializers.get(node.input[position])
        return tensor if tensor is not None and len(self.consumers[tensor.name]) == 1 else None

    def has_private_bias(self, node: onnx.NodeProto) -> bool:
        """True when ``node`` has no bias, or a bias initializer only it reads."""
        return len(node.input) < 3 or not node.input[2] or self.private_initializer(node, 2) is not None

    def scalar_constant(self, name: str) -> bool:
        tensor = self.initializers.get(name)
        return tensor is not None and math.prod(tensor.dims) == 1

    def dense_conv_weight(self, node: onnx.NodeProto) -> onnx.TensorProto | None:
        """A group-1 Conv's weight initializer when only it reads the weight and its bias, else None."""
        if node.op_type != "Conv" or _group(node) != 1 or not self.has_private_bias(node):
            return None
        return self.private_initializer(node, 1)


def _upstream(index: _GraphIndex, depthwise: onnx.NodeProto, width: int) -> tuple[onnx.NodeProto, set[str]] | None:
    """The dense Conv making ``width`` channels that feeds ``depthwise`` through element-wise ops only,
    and the tensors from it to ``depthwise``; None when anything else reads them."""
    tensors: set[str] = set()
    name = depthwise.input[0]
    while name in index.producer:
        if len(index.consumers[name]) != 1 or name in index.outputs:
            return None
        tensors.add(name)
        node = index.producer[name]
        if node.op_type == "Conv":
            weight = index.dense_conv_weight(node)
            return (node, tensors) if weight is not None and weight.dims[0] == width else None
        if node.op_type not in ELEMENTWISE or not all(index.scalar_constant(n) for n in node.input[1:]):
            return None
        name = node.input[0]
    return None


def _downstream(index: _GraphIndex, depthwise: onnx.NodeProto,
                width: int) -> tuple[list[onnx.NodeProto], set[str]] | None:
    """The dense Convs reading ``depthwise``'s output past element-wise ops, and the tensors in between;
    None when anything else reads those tensors or one is a graph output."""
    region = {depthwise.output[0]}
    members: set[int] = set()
    grown = True
    while grown:  # an element-wise node joins once all its non-constant operands are in the region
        grown = False
        for name in list(region):
            for node in index.consumers[name]:
                if (id(node) not in members and node.op_type in ELEMENTWISE
                        and all(n in region or index.scalar_constant(n) for n in node.input)):
                    members.add(id(node))
                    region.update(node.output)
                    grown = True
    consumers: dict[int, onnx.NodeProto] = {}
    for name in region:
        if name in index.outputs:
            return None
        for node in index.consumers[name]:
            if id(node) in members:
                continue
            weight = index.dense_conv_weight(node)
            if weight is None or node.input[0] != name or weight.dims[1] != width:
                return None
            consumers[id(node)] = node
    return (list(consumers.values()), region) if consumers else None


def _widenings(index: _GraphIndex, multiple: int) -> list[_Widening]:
    found = []
    for node in index.nodes:
        width = _group(node)
        if node.op_type != "Conv" or width == 1 or width % multiple == 0 or not index.has_private_bias(node):
            continue
        weight = index.private_initializer(node, 1)
        if weight is None or list(weight.dims[:2]) != [width, 1] or weight.data_type != onnx.TensorProto.FLOAT:
            continue  # grouped but not depthwise, weights computed in the graph, or not fp32 (no NCHWc)
        upstream = _upstream(index, node, width)
        downstream = _downstream(index, node, width) if upstream else None
        if upstream and downstream:
            found.append(_Widening(upstream[0], node, downstream[0], upstream[1] | downstream[1],
                                   width, -width % multiple))
    return found


def _pad(index: _GraphIndex, node: onnx.NodeProto, position: int, axis: int, extra: int) -> None:
    """Append ``extra`` zero slices along ``axis`` to ``node``'s initializer input at ``position``."""
    if len(node.input) <= position or not node.input[position]:
        return
    tensor = index.initializers[node.input[position]]
    array = numpy_helper.to_array(tensor)
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, extra)
    tensor.CopyFrom(numpy_helper.from_array(np.pad(array, widths), tensor.name))


def pad_depthwise_widths(model: onnx.ModelProto, multiple: int = NCHWC_MULTIPLE) -> int:
    """Widen each conv → element-wise → depthwise conv → element-wise → conv chain to ``multiple`` channels.

    Changes ``model`` in place and returns how many depthwise convolutions were widened (0: unchanged).
    Only float32 weights are widened (the blocked layout is fp32's). A chain is left alone unless every
    weight it changes is an initializer only its node reads, no tensor in it is a graph output, and only
    element-wise ops with scalar constants and the consuming convolutions read the hidden tensor. Stale
    ``value_info`` shapes of the widened tensors are dropped.
    """
    graph = model.graph
    index = _GraphIndex(graph)
    widenings = _widenings(index, multiple)
    for w in widenings:
        for node, position, axis in ((w.producer, 1, 0), (w.producer, 2, 0), (w.depthwise, 1, 0),
                                     (w.depthwise, 2, 0), *((c, 1, 1) for c in w.consumers)):
            _pad(index, node, position, axis, w.extra)
        for attribute in w.depthwise.attribute:
            if attribute.name == "group":
                attribute.i = w.width + w.extra
    stale = set().union(*(w.tensors for w in widenings)) if widenings else set()
    kept = [v for v in graph.value_info if v.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return len(widenings)
