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
import stat
import zipfile
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


def file_problem(path: str) -> str | None:
    """Why ``path`` cannot be read as a checkpoint file before opening it: missing, a directory, a
    FIFO, socket or device, unreadable; None for a readable regular file."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be examined ({exc.strerror or exc})"
    kinds = ((stat.S_ISDIR, "is a directory, not a checkpoint file"),
             (stat.S_ISFIFO, "is a FIFO (named pipe), not a checkpoint file"),
             (stat.S_ISSOCK, "is a socket, not a checkpoint file"),
             (stat.S_ISCHR, "is a character device, not a checkpoint file"),
             (stat.S_ISBLK, "is a block device, not a checkpoint file"))
    for test, what in kinds:
        if test(info.st_mode):
            return what
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if not head:
        return "is empty (0 bytes)"
    return None


def _damaged_zip_member(path: str) -> str | None:
    """For torch's zip format: the first member whose stored CRC-32 does not match its bytes (torch
    itself does not check them, so a flipped byte would load silently); None when all match or the
    file is not a zip archive (the legacy format carries no checksums)."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        return f"(unreadable archive: {exc})"


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint file without executing code and unwrap its state_dict.

    Raises:
        CheckpointError: naming the cause -- missing, a directory, a FIFO, unreadable (permission),
            empty, truncated or corrupt (a stored checksum that does not match), not a torch file,
            unsafe to unpickle, holding no tensors.
    """
    path = os.fspath(path)
    problem = file_problem(path)
    if problem is not None:
        raise CheckpointError(f"checkpoint {path!r} {problem}")
    if path.endswith(".safetensors"):
        return Checkpoint(state_dict=_read_safetensors(path), source=path)
    damaged = _damaged_zip_member(path)
    if damaged is not None:
        raise CheckpointError(f"checkpoint {path!r} is corrupt: the stored checksum (CRC-32) of {damaged} does "
                              "not match its bytes (a damaged or flipped byte); get the file again")
    try:
        obj = _load_weights_only(path)
    except Exception as exc:  # torch.load raises many types on garbage (IndexError, KeyError, ...)
        raise CheckpointError(f"{path!r} is not a readable PyTorch checkpoint: "
                              f"{_diagnosis(exc, _starts_like_zip(path))}") from exc
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


def _starts_like_zip(path: str) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def _diagnosis(exc: BaseException, zip_format: bool) -> str:
    """What a torch.load failure means, then torch's informative lines (without its generic advice)."""
    text = " ".join(str(exc).split())
    if "WeightsUnpickler" in text or "weights_only" in text.lower():
        what = "it holds objects that safe (weights_only) loading refuses"
    elif zip_format:
        what = "truncated or corrupt (a zip archive, torch's format, that cannot be read whole)"
    else:
        what = "not a PyTorch checkpoint (another format, or a damaged file of torch's legacy format)"
    return f"{what}: {_reason(exc)}"


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


#: Sentences of torch.load's generic advice, dropped from error messages.
_ADVICE = ("Weights only load failed", "In PyTorch 2.6", "Re-running `torch.load`", "Please file an issue",
           "Check the documentation", "Alternatively,", "WeightsUnpickler error", "This is an internal miniz",
           "If you are seeing this error", "This can happen if", "(1) In PyTorch", "(2) Alternatively")


def _reason(exc: BaseException) -> str:
    """torch.load's informative lines on one line (its generic advice left out), at most 400 characters."""
    text = str(exc).strip()
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    kept = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(_ADVICE):
            kept.append(line.split(". This is an internal miniz")[0])
    reason = " ".join(kept) or type(exc).__name__
    return reason if len(reason) <= 400 else reason[:397] + "..."


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
    bad = non_finite_tensors(state_dict)
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise CheckpointError(f"{checkpoint.source}: tensor {bad[0]} holds non-finite values (NaN or "
                              f"infinity){more}; the file is damaged or the training diverged")
    net.load_state_dict(state_dict, strict=True)
    return checkpoint


def non_finite_tensors(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or infinity, in key order."""
    return [name for name, tensor in state_dict.items()
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]


def load_checkpoint(net: nn.Module, path: str | os.PathLike) -> Checkpoint:
    """Read ``path`` safely and load it strictly into ``net``; returns the checkpoint (with its metadata)."""
    return load_weights(net, read_checkpoint(path))
