"""Which registered networks a state_dict fits: exactly (keys and shapes), or else most closely.

Used by ``weights verify`` (identification) and by strict loading's error message ("its weights fit
…"). Networks are compared as skeletons on the ``meta`` device (keys and shapes, no memory). Per family
the state_dict is adapted once by the family's ``adapt_state_dict`` (e.g. Hugging Face layouts), and
only families whose top-level names (``backbone``, ``decode_head``, …) match are compared key by key.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import nn

from .checkpoint import key_mismatch
from .registry import available_networks, build_network, network_spec


def skeleton(name: str) -> nn.Module:
    """``name`` built on the meta device: its keys and shapes, instantly, without memory."""
    with torch.device("meta"):
        return build_network(name)


def adapted(net: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor] | str:
    """``state_dict`` after ``net``'s own key adaptation (e.g. of Hugging Face keys), or why it failed."""
    adapt = getattr(net, "adapt_state_dict", None)
    try:
        return adapt(state_dict) if adapt else state_dict
    except ValueError as exc:  # e.g. a HF state dict with keys that have no official counterpart
        return str(exc)


def _top_level(keys: Iterable[str]) -> set[str]:
    return {str(k).split(".", 1)[0] for k in keys}


class Identifier:
    """Compares state_dicts with registered networks, keeping the skeletons it built (one verification,
    one error message: a short-lived object, not a global cache)."""

    def __init__(self, names: Iterable[str] | None = None) -> None:
        self.names = list(names) if names is not None else available_networks()
        self._nets: dict[str, nn.Module] = {}

    def net(self, name: str) -> nn.Module:
        if name not in self._nets:
            self._nets[name] = skeleton(name)
        return self._nets[name]

    def _per_family(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, Mapping[str, torch.Tensor] | None]:
        """The state_dict adapted by each family's first network; None where the family does not match."""
        out: dict[str, Mapping[str, torch.Tensor] | None] = {}
        for name in self.names:
            family = network_spec(name).family
            if family not in out:
                first = self.net(name)
                result = adapted(first, state_dict)
                same = not isinstance(result, str) and _top_level(result) == _top_level(first.state_dict())
                out[family] = result if same else None  # type: ignore[assignment]
        return out

    def fits(self, state_dict: Mapping[str, torch.Tensor]) -> tuple[str, ...]:
        """Networks whose keys and shapes ``state_dict`` fits exactly (several when they share an
        architecture, e.g. the three DPT-Hybrid networks)."""
        by_family = self._per_family(state_dict)
        return tuple(name for name in self.names
                     if (sd := by_family[network_spec(name).family]) is not None
                     and key_mismatch(self.net(name), sd) is None)

    def closest(self, state_dict: Mapping[str, torch.Tensor]) -> tuple[str, float] | None:
        """The network sharing the largest fraction of (key, shape) entries with ``state_dict`` (over the
        union of both), and that fraction; None when no family matches at all."""
        by_family = self._per_family(state_dict)
        best: tuple[str, float] | None = None
        for name in self.names:
            sd = by_family[network_spec(name).family]
            if sd is None:
                continue
            ours = {(k, tuple(v.shape)) for k, v in self.net(name).state_dict().items()}
            theirs = {(k, tuple(v.shape)) for k, v in sd.items()}
            score = len(ours & theirs) / len(ours | theirs)
            if best is None or score > best[1]:
                best = (name, score)
        return best

    def guess(self, state_dict: Mapping[str, torch.Tensor]) -> str:
        """A phrase naming the network(s) ``state_dict`` fits, or the closest one; "" when none is near."""
        fits = self.fits(state_dict)
        if fits:
            return f"its weights fit {', '.join(fits)}"
        closest = self.closest(state_dict)
        if closest is None or closest[1] < 0.5:
            return ""
        return f"no registered network fits it exactly; closest: {closest[0]} ({closest[1]:.0%} of the entries match)"
