"""The network registry: every network this package can build, by name.

Each family module (``edaformer``, ``dpt``) contributes a tuple ``NETWORKS`` of :class:`NetworkSpec`;
the registry is read-only and built on demand (no global mutable state).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

from torch import nn


@dataclass(frozen=True)
class NetworkSpec:
    """How to build one named network and what it produces."""

    name: str
    task: str  # "segmentation" or "depth"
    family: str  # "edaformer", "dpt", "hrvit" or "vit_comer"
    builder: Callable[..., nn.Module]  # called with kwargs, overrides and name=
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    dataset: str = ""
    output: Any = None  # what a depth network's raw output means (depth_units.DepthOutput)


def _collect() -> Mapping[str, NetworkSpec]:
    from . import dpt, edaformer, hrvit, vit_comer

    specs: dict[str, NetworkSpec] = {}
    for module in (edaformer, dpt, hrvit, vit_comer):
        for spec in module.NETWORKS:
            specs[spec.name] = spec
    return MappingProxyType(specs)


def available_networks(task: str | None = None) -> list[str]:
    """Names ``build_network`` accepts, optionally only those of one task (``segmentation``/``depth``)."""
    return sorted(n for n, s in _collect().items() if task is None or s.task == task)


def network_spec(name: str) -> NetworkSpec:
    """The registry entry for ``name``; ``ValueError`` listing the choices when unknown."""
    specs = _collect()
    if name not in specs:
        raise ValueError(f"unknown network {name!r}; available: {', '.join(sorted(specs))}")
    return specs[name]


def build_network(name: str, **overrides: Any) -> nn.Module:
    """Build ``name`` in eval mode with random weights; ``overrides`` replace its constructor arguments."""
    spec = network_spec(name)
    net = spec.builder(**{**spec.kwargs, "name": name, **overrides})
    return net.eval()
