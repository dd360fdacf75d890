"""Networks as plain ``torch.nn.Module``s with the official state_dict keys, built by name.

``build_network(name)`` returns a network in eval mode with random weights; load official weights
with :func:`load_checkpoint` (strict key matching, ``weights_only`` reading). Importing this package
imports every network family, which registers its networks (:mod:`.registry`).
"""
from __future__ import annotations

from . import dpt, edaformer, hrvit, sra, vit_comer  # noqa: F401  (each family registers its networks on import)
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, load_weights, read_checkpoint
from .isr import ISRScheme, ISRSetting
from .registry import NetworkSpec, available_networks, build_network, network_spec, registered_networks

__all__ = [
    "Checkpoint", "CheckpointError", "ISRScheme", "ISRSetting", "NetworkSpec", "available_networks",
    "build_network", "load_checkpoint", "load_weights", "network_spec", "read_checkpoint", "registered_networks",
]
