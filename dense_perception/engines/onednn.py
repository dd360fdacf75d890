"""oneDNN's matrix-multiply kernel for the linear layers of CPU inference.

On the CPU ``nn.Linear`` calls MKL's ``sgemm``. For narrow token layers -- EDAFormer's stages are 32
to 256 channels wide against up to 16,384 tokens -- oneDNN's JIT-compiled kernel, which PyTorch ships
for its own CPU graph compiler (TorchInductor emits ``mkldnn::_linear_pointwise`` for frozen CPU
graphs), is faster: twice as fast on EDAFormer-T's 32-wide stage-1 layers, 5-30 % on the others, and
EDAFormer-T's whole forward gains 4-8 % (bench/RESULTS.md). On wide layers it is not -- probably
because the weight, kept in torch's plain layout, is re-laid out on every call: DPT's 768-wide ViT runs
about 5 % slower with it. So :func:`use_onednn_linear` swaps only layers with a side of at most
:data:`MAX_NARROW_SIDE` for :class:`OneDNNLinear`, which holds the same parameters under the same names
(state_dict keys, checkpoints and weight digests are unchanged) and gives the same sums in another
order (float32 rounding, ~1e-7 relative).

Anything but CPU float32 inference without autograd on a batch of rows -- CUDA tensors, training, ONNX
export, tracing, ``torch.compile``, a 1-D or empty input -- runs the stock ``nn.Linear``, so a swapped
network stays usable everywhere.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_OP_NAME = "_linear_pointwise"
#: layers whose smaller side (in or out features) is at most this run on oneDNN (measured, see above)
MAX_NARROW_SIDE = 256


def onednn_linear_available() -> bool:
    """True when this torch build has oneDNN and its fused linear operator."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, _OP_NAME)


def _plain_path() -> bool:
    """Contexts that must see ``F.linear``: exporters and compilers trace it; autograd needs it."""
    return (torch.is_grad_enabled() or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()
            or torch.compiler.is_compiling())


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` whose CPU float32 inference runs oneDNN's kernel (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32 or self.weight.dtype != torch.float32 \
                or x.dim() < 2 or x.numel() == 0 or _plain_path():
            return F.linear(x, self.weight, self.bias)
        return getattr(torch.ops.mkldnn, _OP_NAME)(x, self.weight, self.bias, "none", [], "")

    @classmethod
    def sharing(cls, linear: nn.Linear) -> "OneDNNLinear":
        """A ``OneDNNLinear`` holding ``linear``'s own parameter objects (no copy)."""
        swapped = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        swapped.weight = linear.weight
        swapped.bias = linear.bias
        swapped.train(linear.training)
        return swapped


def use_onednn_linear(net: nn.Module, max_side: int = MAX_NARROW_SIDE) -> int:
    """Swap each plain ``nn.Linear`` inside ``net`` whose smaller side is at most ``max_side`` for a
    :class:`OneDNNLinear` sharing its parameters, in place; returns how many were swapped (0 when this
    torch build lacks the operator). Subclasses of ``nn.Linear`` with their own behaviour are left alone."""
    if not onednn_linear_available():
        return 0
    swapped = 0
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and min(child.in_features, child.out_features) <= max_side:
                setattr(parent, name, OneDNNLinear.sharing(child))
                swapped += 1
    return swapped
