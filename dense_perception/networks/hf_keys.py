"""Hugging Face ``transformers`` state_dicts in official key names: the mechanism both converters share.

A converter (``dpt_hf`` for ``DPTForDepthEstimation``, ``sra.hf`` for ``SegformerForSemanticSegmentation``)
gives a table of renames and the pattern of the projections that Hugging Face keeps apart and the
official code fuses (DPT's query/key/value, SegFormer's key/value). :func:`regroup` sorts every key
into a renamed tensor or a part of a fused one, and refuses keys with no counterpart;
:func:`fused` joins a fused projection's parts in the official order. :func:`to_hf` is the inverse
conversion, which gives a Hugging Face model the official weights.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Mapping, Sequence

import torch

#: (pattern, replacement): a ``re.Match.expand`` template or a function of the match.
RenameTable = Sequence[tuple[str, "str | Callable[[re.Match[str]], str]"]]


def rename_key(table: RenameTable, key: str) -> str | None:
    """The official name of ``key`` by the first pattern of ``table`` that matches it whole, or None."""
    for pattern, replacement in table:
        match = re.fullmatch(pattern, key)
        if match:
            return replacement(match) if callable(replacement) else match.expand(replacement)
    return None


def regroup(state_dict: Mapping[str, torch.Tensor], table: RenameTable, parts: re.Pattern[str],
            part_of: Callable[[re.Match[str]], tuple[Hashable, str]], family: str,
            name: Callable[[str], str] = lambda key: key,
            ) -> tuple[dict[str, torch.Tensor], dict[Hashable, dict[str, torch.Tensor]]]:
    """Split a Hugging Face state_dict into renamed tensors and the parts of fused projections.

    Each key is first passed through ``name`` (e.g. newer ``transformers`` names to the file names);
    a key matching ``parts`` goes to the fused projection ``part_of(match)`` names (which projection,
    which part), any other is renamed by ``table``.

    Raises:
        ValueError: keys with no official counterpart (the first few named), e.g. another task's head.
    """
    renamed: dict[str, torch.Tensor] = {}
    grouped: dict[Hashable, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, tensor in state_dict.items():
        key = name(key)
        match = parts.fullmatch(key)
        if match:
            projection, part = part_of(match)
            grouped.setdefault(projection, {})[part] = tensor
            continue
        new = rename_key(table, key)
        if new is None:
            unknown.append(key)
        else:
            renamed[new] = tensor
    if unknown:
        raise ValueError(f"{len(unknown)} Hugging Face {family} keys have no official counterpart: "
                         f"{sorted(unknown)[:5]}")
    return renamed, grouped


def fused(parts: Mapping[str, torch.Tensor], order: Sequence[str], where: str) -> torch.Tensor:
    """The parts of one fused projection concatenated in ``order`` (dim 0, the output features).

    Raises:
        ValueError: a part is missing or unexpected (``where`` names the projection).
    """
    if set(parts) != set(order):
        raise ValueError(f"{where}: found only {sorted(parts)} of {'/'.join(order)}")
    return torch.cat([parts[part] for part in order])


def to_hf(official: Mapping[str, torch.Tensor], hf_keys: Sequence[str], table: RenameTable,
          parts: re.Pattern[str], fused_part: Callable[[re.Match[str]], tuple[str, str]],
          order: Sequence[str], family: str, name: Callable[[str], str] = lambda key: key,
          ) -> dict[str, torch.Tensor]:
    """Official weights under a Hugging Face model's keys ``hf_keys`` (copies): the inverse of
    :func:`regroup` and :func:`fused`. A key matching ``parts`` (after ``name``) takes its part of the
    official fused tensor ``fused_part(match)`` names (tensor name, part; parts concatenated in
    ``order``); any other key the tensor ``table`` renames it to.

    Raises:
        ValueError: a key with no official counterpart.
    """
    out: dict[str, torch.Tensor] = {}
    for hf_key in hf_keys:
        key = name(hf_key)
        match = parts.fullmatch(key)
        if match:
            fused_name, part = fused_part(match)
            out[hf_key] = official[fused_name].chunk(len(order), dim=0)[list(order).index(part)].clone()
            continue
        new = rename_key(table, key)
        if new is None:
            raise ValueError(f"Hugging Face {family} key {hf_key!r} has no official counterpart")
        out[hf_key] = official[new].clone()
    return out
