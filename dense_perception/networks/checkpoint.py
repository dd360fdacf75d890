"""One checkpoint loader for every network: read a file safely, check its keys strictly, load it.

Official files come in a few wrappers: a plain ``state_dict`` (the DPT release files), an mmcv/mmseg
checkpoint ``{"state_dict": ..., "meta": ...}`` (EDAFormer, SegFormer), or ``{"model": ..., "optimizer": ...}``.
All are read with ``torch.load(..., weights_only=True)``: no pickled code ever runs. ``.safetensors`` files
(Hugging Face) are read with ``safetensors``.

A network may adapt foreign key layouts (for example the Hugging Face DPT) by defining
``adapt_state_dict(state_dict) -> state_dict``; the strict comparison runs on the adapted keys.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

#: How many keys of each kind an error message names.
_SHOWN = 5


class CheckpointError(ValueError):
    """A file is not a checkpoint, or its weights do not fit the network."""


@dataclass
class Checkpoint:
    """Weights read from a file, plus whatever metadata sat beside them."""

    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint file without executing code and unwrap its state_dict.

    Raises:
        CheckpointError: the file is missing, not a torch file, unsafe to unpickle, or holds no tensors.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    if path.endswith(".safetensors"):
        return Checkpoint(state_dict=_read_safetensors(path), source=path)
    try:
        obj = _load_weights_only(path)
    except Exception as exc:  # torch.load raises many types on garbage (IndexError, KeyError, ...)
        raise CheckpointError(
            f"{path!r} is not a readable PyTorch checkpoint (truncated, corrupt, another format, or "
            f"holding objects that weights_only loading refuses): {_reason(exc)}"
        ) from exc
    return unwrap_checkpoint(obj, source=path)


def _read_safetensors(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file (a format without code: nothing to execute)."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f"{path}: reading .safetensors needs the `safetensors` package "
                              f"(pip install safetensors; it comes with transformers)") from None
    try:
        return load_file(path)
    except Exception as exc:  # safetensors raises its own error types on garbage
        raise CheckpointError(f"{path}: not a readable .safetensors file: {exc}") from exc


#: Globals that plain NumPy arrays in checkpoint metadata (an mmseg palette, say) need; nothing executable.
_NUMPY_GLOBAL_NAMES = ("_reconstruct", "scalar", "ndarray", "dtype")


def _numpy_safe_globals() -> list[Any]:
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    dtype_classes = [c for c in vars(np.dtypes).values() if isinstance(c, type)]
    return [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype, *dtype_classes]


def _load_weights_only(path: str) -> Any:
    """``torch.load(weights_only=True)``, also admitting NumPy arrays (never arbitrary classes)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        if not needed or not all(g.startswith("numpy.") and g.rpartition(".")[2] in _NUMPY_GLOBAL_NAMES
                                 or g.startswith("numpy.dtypes.") for g in needed):
            raise
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)


def _reason(exc: BaseException) -> str:
    """The informative line of a torch.load error (its first lines are generic advice)."""
    text = str(exc).strip()
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].strip()
    line = text.splitlines()[0].strip() if text else ""
    return line or type(exc).__name__


def unwrap_checkpoint(obj: Any, source: str = "<memory>") -> Checkpoint:
    """Find the tensor dict inside the wrappers official checkpoints use."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict of tensors, found {type(obj).__name__}")
    meta: dict[str, Any] = {}
    for wrapper in ("state_dict", "model"):
        inner = obj.get(wrapper)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            # mmcv keeps CLASSES/PALETTE under "meta"; flatten it with any other non-weight entries
            meta = {k: v for k, v in obj.items() if k not in (wrapper, "optimizer", "meta")}
            if isinstance(obj.get("meta"), Mapping):
                meta.update(obj["meta"])
            obj = inner
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{source}: holds no tensors (keys: {sorted(map(str, obj))[:_SHOWN]})")
    if len(tensors) != len(obj):
        others = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
        raise CheckpointError(f"{source}: entries that are not tensors: {others[:_SHOWN]}")
    return Checkpoint(state_dict=dict(tensors), meta=meta, source=source)


def _first(keys: list[str]) -> str:
    more = f", … (+{len(keys) - _SHOWN})" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def key_mismatch(net: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Describe how ``state_dict`` differs from ``net``'s keys and shapes; None when it fits exactly."""
    expected = net.state_dict()
    missing = sorted(k for k in expected if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in expected)
    misshaped = sorted(
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    )
    if not (missing or unexpected or misshaped):
        return None
    parts = [f"network expects {len(expected)} entries, file has {len(state_dict)}"]
    if missing:
        parts.append(f"{len(missing)} missing: {_first(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {_first(unexpected)}")
    if misshaped:
        parts.append(f"{len(misshaped)} with the wrong shape (file vs network): {_first(misshaped)}")
    return "; ".join(parts)


def load_weights(net: nn.Module, checkpoint: Checkpoint | Mapping[str, torch.Tensor]) -> Checkpoint:
    """Load weights strictly into ``net`` after the network's own key adaptation, if any.

    Raises:
        CheckpointError: with counts and the first few missing, unexpected and mis-shaped keys, and the
            registered network(s) the weights fit instead (or the closest one), if any.
    """
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = unwrap_checkpoint(checkpoint)
    state_dict = checkpoint.state_dict
    adapt = getattr(net, "adapt_state_dict", None)
    if adapt is not None:
        state_dict = adapt(state_dict)
    problem = key_mismatch(net, state_dict)
    if problem:
        from .identify import Identifier  # the registry's networks; imported here to keep this module low-level

        guess = Identifier().guess(checkpoint.state_dict)
        raise CheckpointError(
            f"{checkpoint.source} does not fit {type(net).__name__}"
            f"{' ' + net.name if isinstance(getattr(net, 'name', None), str) else ''}: {problem}"
            + (f"; {guess}" if guess else "")
        )
    net.load_state_dict(state_dict, strict=True)
    return checkpoint


def load_checkpoint(net: nn.Module, path: str | os.PathLike) -> Checkpoint:
    """Read ``path`` safely and load it strictly into ``net``; returns the checkpoint (with its metadata)."""
    return load_weights(net, read_checkpoint(path))
