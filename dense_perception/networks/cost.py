"""Parameter and multiply-add counts of any network, per top-level part.

Multiply-adds (MACs; one multiply plus one add = 1) are counted by PyTorch's own
``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2): convolutions, transposed convolutions,
linear layers and the attention matmuls (``scaled_dot_product_attention`` counted as its two matrix
products, with the true floor-pooled key counts). Norms, activations, softmax, pooling and resizes are
not counted. This is the "exact MACs" convention of ``shared/design/edaformer.md`` and ``dpt.md``; the
EDAFormer paper's "GFLOPs" are mmcv multiply-add counts and agree with it within 1 %, as do the SegFormer
and PVT counts of ``shared/design/sra.md`` section 8.4. Modules that run an exact shortcut of the official
formulation (attribute ``folded``, e.g. the SegFormer head) are counted unfolded: the counts describe the
architecture, while such a network computes fewer.

The forward runs on PyTorch's ``meta`` device: shapes only, no memory, no arithmetic, so even
1024×2048 counts are instant.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

CONVENTION = (
    "multiply-adds (MACs) of convolutions, linear layers and attention matmuls; norms, activations, "
    "softmax, pooling and resizes not counted (torch.utils.flop_counter, FLOPs/2)"
)


@dataclass(frozen=True)
class NetworkCost:
    """Parameters and MACs of one network at one input size, per top-level child module."""

    height: int
    width: int
    params: dict[str, int]
    macs: dict[str, int]

    @property
    def total_params(self) -> int:
        return sum(self.params.values())

    @property
    def total_macs(self) -> int:
        return sum(self.macs.values())


def count_parameters(net: nn.Module) -> dict[str, int]:
    """Trainable parameters per top-level child (unused official parameters included, as the
    official tools count them)."""
    return {name: sum(p.numel() for p in child.parameters()) for name, child in net.named_children()}


def count_cost(net: nn.Module, height: int, width: int) -> NetworkCost:
    """Parameters and MACs of ``net`` for one ``[1, 3, height, width]`` input."""
    params = count_parameters(net)
    meta_net = copy.deepcopy(net).to("meta").eval()
    for module in meta_net.modules():  # count the official formulation, not an exact shortcut of it
        if getattr(module, "folded", False):
            module.folded = False
    x = torch.zeros(1, 3, height, width, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta_net(x)
    per_module = counter.get_flop_counts()
    macs = {}
    for name, _ in net.named_children():
        key = f"{type(meta_net).__name__}.{name}"
        flops = per_module.get(key, per_module.get(name, {}))
        macs[name] = int(sum(flops.values()) // 2)
    total = int(counter.get_total_flops() // 2)
    missing = total - sum(macs.values())
    if missing:
        macs["(other)"] = missing
    return NetworkCost(height=height, width=width, params=params, macs=macs)
