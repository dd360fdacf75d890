"""Hugging Face DPT state dicts converted to the official layout."""
from __future__ import annotations

from pathlib import Path

import torch

from ..atomic import atomic_path
from ..networks.checkpoint import CheckpointError, key_mismatch, read_checkpoint
from ..networks.identify import skeleton
from ..networks.registry import network_spec
from .catalogue import HF_IMPORT_SUFFIX, models_dir
from .digests import sha256_file
from .pins import _write_pin


def read_hf_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a HF ``pytorch_model.bin`` (read with ``weights_only``) or ``.safetensors`` file."""
    return read_checkpoint(path).state_dict


def import_hf(path: Path | str, name: str | None = None, dest: Path | None = None, *,
              models: Path | None = None) -> Path:
    """Convert a HF ``DPTForDepthEstimation`` state dict to the official DPT layout and save it.

    ``name`` defaults to ``dpt_hybrid_midas`` or ``dpt_large_midas`` by the keys (hybrid when there is a
    ResNet backbone); the converted weights must load strictly into it. The result is written with
    ``torch.save`` to ``dest`` (default ``models/<name>_from_hf.pt``) and its digest pinned.

    Raises:
        CheckpointError: unreadable file, not a HF DPT state dict, or weights that do not fit ``name``.
    """
    from ..networks.dpt_hf import convert_hf_state_dict, is_hf_state_dict

    path, models = Path(path), models or models_dir()
    state_dict = read_hf_state_dict(path)
    if not is_hf_state_dict(state_dict):
        raise CheckpointError(f"{path}: not a Hugging Face DPTForDepthEstimation state dict (its keys do not all "
                              f"start with dpt., neck. or head.); an official file needs no import — verify it")
    try:
        converted = convert_hf_state_dict(state_dict)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    hybrid = any(".patch_embed.backbone." in k for k in converted)
    name = name or ("dpt_hybrid_midas" if hybrid else "dpt_large_midas")
    if network_spec(name).family != "dpt":
        raise ValueError(f"{name} is not a DPT network; Hugging Face import is for DPT only")
    problem = key_mismatch(skeleton(name), converted)
    if problem:
        raise CheckpointError(f"{path}: the converted weights do not fit {name}: {problem}")
    dest = Path(dest) if dest else models / (name + HF_IMPORT_SUFFIX)
    with atomic_path(dest) as tmp:
        torch.save(dict(converted), tmp)
    _write_pin(dest, sha256_file(dest), name, models)  # its keys were checked just above
    return dest

