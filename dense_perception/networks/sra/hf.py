"""Convert Hugging Face ``SegformerForSemanticSegmentation`` state_dicts to the official SegFormer keys.

Key table: ``shared/design/sra.md`` section 7.1. The files on the hub (``nvidia/segformer-b*-finetuned-*``,
``.safetensors`` or ``pytorch_model.bin``) use transformers' 4.x module names -- transformers 5.x writes the
same names and renames them only in memory (``segformer.stages.i.blocks.j.attention.q_proj``, ...); a
``state_dict()`` saved from a 5.x model in memory is accepted too (its names are mapped to the 4.x ones
first). The conversion is a renaming plus two structural changes:

- the separate ``key``/``value`` Linears are concatenated into ``attn.kv`` (key rows first);
- the unused ``decode_head.conv_seg`` (``[classes, 128, 1, 1]``) has no HF counterpart and is filled with
  zeros so that strict loading succeeds.

Known, documented difference: HF's SegFormer builds its block and stage LayerNorms with eps 1e-5 where the
official MiT (ours) uses 1e-6, so converted weights reproduce HF's own logits only to ~1e-6 relative.
"""
from __future__ import annotations

import re
from typing import Callable, Mapping

import torch

from ..hf_keys import fused, regroup, to_hf
from .segformer import UNUSED_CONV_SEG_CHANNELS

_ENC = r"segformer\.encoder\."
_BLOCK = _ENC + r"block\.(\d+)\.(\d+)\."


def _stage(index: str) -> int:
    return int(index) + 1


# (HF pattern, official replacement) for every key that is a pure rename; applied with re.fullmatch.
_RENAMES: tuple[tuple[str, Callable[[re.Match[str]], str]], ...] = (
    (_ENC + r"patch_embeddings\.(\d+)\.proj\.(weight|bias)",
     lambda m: f"backbone.patch_embed{_stage(m[1])}.proj.{m[2]}"),
    (_ENC + r"patch_embeddings\.(\d+)\.layer_norm\.(weight|bias)",
     lambda m: f"backbone.patch_embed{_stage(m[1])}.norm.{m[2]}"),
    (_BLOCK + r"layer_norm_([12])\.(weight|bias)",
     lambda m: f"backbone.block{_stage(m[1])}.{m[2]}.norm{m[3]}.{m[4]}"),
    (_BLOCK + r"attention\.self\.query\.(weight|bias)",
     lambda m: f"backbone.block{_stage(m[1])}.{m[2]}.attn.q.{m[3]}"),
    (_BLOCK + r"attention\.self\.sr\.(weight|bias)",
     lambda m: f"backbone.block{_stage(m[1])}.{m[2]}.attn.sr.{m[3]}"),
    (_BLOCK + r"attention\.self\.layer_norm\.(weight|bias)",
     lambda m: f"backbone.block{_stage(m[1])}.{m[2]}.attn.norm.{m[3]}"),
    (_BLOCK + r"attention\.output\.dense\.(weight|bias)",
     lambda m: f"backbone.block{_stage(m[1])}.{m[2]}.attn.proj.{m[3]}"),
    (_BLOCK + r"mlp\.dense1\.(weight|bias)", lambda m: f"backbone.block{_stage(m[1])}.{m[2]}.mlp.fc1.{m[3]}"),
    (_BLOCK + r"mlp\.dwconv\.dwconv\.(weight|bias)",
     lambda m: f"backbone.block{_stage(m[1])}.{m[2]}.mlp.dwconv.dwconv.{m[3]}"),
    (_BLOCK + r"mlp\.dense2\.(weight|bias)", lambda m: f"backbone.block{_stage(m[1])}.{m[2]}.mlp.fc2.{m[3]}"),
    (_ENC + r"layer_norm\.(\d+)\.(weight|bias)", lambda m: f"backbone.norm{_stage(m[1])}.{m[2]}"),
    (r"decode_head\.linear_c\.(\d+)\.proj\.(weight|bias)",
     lambda m: f"decode_head.linear_c{_stage(m[1])}.proj.{m[2]}"),
    (r"decode_head\.linear_fuse\.weight", lambda m: "decode_head.linear_fuse.conv.weight"),
    (r"decode_head\.batch_norm\.(weight|bias|running_mean|running_var|num_batches_tracked)",
     lambda m: f"decode_head.linear_fuse.bn.{m[1]}"),
    (r"decode_head\.classifier\.(weight|bias)", lambda m: f"decode_head.linear_pred.{m[1]}"),
)
_KEY_VALUE = re.compile(_BLOCK + r"attention\.self\.(key|value)\.(weight|bias)")

_V5_BLOCK = r"segformer\.stages\.(\d+)\.blocks\.(\d+)\."
#: transformers 5.x in-memory names → the 4.x (file) names, applied with re.sub before the table above.
_V5_TO_V4: tuple[tuple[str, str], ...] = (
    (r"^segformer\.stages\.(\d+)\.patch_embeddings\.", r"segformer.encoder.patch_embeddings.\1."),
    (r"^segformer\.stages\.(\d+)\.layer_norm\.", r"segformer.encoder.layer_norm.\1."),
    (r"^" + _V5_BLOCK + r"layernorm_before\.", r"segformer.encoder.block.\1.\2.layer_norm_1."),
    (r"^" + _V5_BLOCK + r"layernorm_after\.", r"segformer.encoder.block.\1.\2.layer_norm_2."),
    (r"^" + _V5_BLOCK + r"attention\.q_proj\.", r"segformer.encoder.block.\1.\2.attention.self.query."),
    (r"^" + _V5_BLOCK + r"attention\.k_proj\.", r"segformer.encoder.block.\1.\2.attention.self.key."),
    (r"^" + _V5_BLOCK + r"attention\.v_proj\.", r"segformer.encoder.block.\1.\2.attention.self.value."),
    (r"^" + _V5_BLOCK + r"attention\.o_proj\.", r"segformer.encoder.block.\1.\2.attention.output.dense."),
    (r"^" + _V5_BLOCK + r"attention\.sequence_reduction\.sequence_reduction\.",
     r"segformer.encoder.block.\1.\2.attention.self.sr."),
    (r"^" + _V5_BLOCK + r"attention\.sequence_reduction\.layer_norm\.",
     r"segformer.encoder.block.\1.\2.attention.self.layer_norm."),
    (r"^" + _V5_BLOCK + r"mlp\.fc1\.", r"segformer.encoder.block.\1.\2.mlp.dense1."),
    (r"^" + _V5_BLOCK + r"mlp\.fc2\.", r"segformer.encoder.block.\1.\2.mlp.dense2."),
    (r"^" + _V5_BLOCK + r"mlp\.dwconv\.", r"segformer.encoder.block.\1.\2.mlp.dwconv."),
    (r"^decode_head\.linear_projections\.", r"decode_head.linear_c."),
)


def _v4_name(key: str) -> str:
    """A transformers 5.x in-memory name as the 4.x (file) name; 4.x names pass unchanged."""
    for pattern, replacement in _V5_TO_V4:
        new, count = re.subn(pattern, replacement, key)
        if count:
            return new
    return key


def is_hf_segformer(state_dict: Mapping[str, object]) -> bool:
    """True when the keys look like a Hugging Face SegFormer state_dict (``segformer.encoder.*``)."""
    return any(str(k).startswith("segformer.") for k in state_dict)


#: SegFormer's fused projection: its parts in the official order.
_KV_ORDER = ("key", "value")


def convert_hf_segformer(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official-key state_dict from a HF ``SegformerForSemanticSegmentation`` one (see the module docstring).

    Raises:
        ValueError: a key has no official counterpart (e.g. an image-classification head), or a block has
            a key without its value (or the reverse).
    """
    out, key_value = regroup(state_dict, _RENAMES, _KEY_VALUE, lambda m: ((m[1], m[2], m[4]), m[3]),
                             "SegFormer", name=_v4_name)
    for (stage, block, kind), parts in sorted(key_value.items()):
        where = f"stage {_stage(stage)} block {block} {kind}"
        out[f"backbone.block{_stage(stage)}.{block}.attn.kv.{kind}"] = fused(parts, _KV_ORDER, where)
    classifier = out.get("decode_head.linear_pred.weight")
    if classifier is not None:
        out.setdefault("decode_head.conv_seg.weight",
                       classifier.new_zeros(classifier.shape[0], UNUSED_CONV_SEG_CHANNELS, 1, 1))
        out.setdefault("decode_head.conv_seg.bias", classifier.new_zeros(classifier.shape[0]))
    return out


def official_to_hf_segformer(official: Mapping[str, torch.Tensor], hf_keys: list[str]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`convert_hf_segformer` for the keys of a given HF model (``hf_keys``, 4.x or 5.x
    names): official weights in HF layout, so both implementations can run the same weights."""
    return to_hf(official, hf_keys, _RENAMES, _KEY_VALUE,
                 lambda m: (f"backbone.block{_stage(m[1])}.{m[2]}.attn.kv.{m[4]}", m[3]), _KV_ORDER, "SegFormer",
                 name=_v4_name)


def hf_segformer_config(variant: str, num_labels: int) -> object:
    """``transformers.SegformerConfig`` of MiT-``variant`` with a ``num_labels`` head, as the hub's
    ``nvidia/segformer-b*-finetuned-*`` files configure it (needs ``transformers``)."""
    from transformers import SegformerConfig

    from .segformer import HEAD_WIDTH, MIT_VARIANTS

    cfg = MIT_VARIANTS[variant]
    return SegformerConfig(num_labels=num_labels, hidden_sizes=list(cfg.widths), depths=list(cfg.depths),
                           num_attention_heads=list(cfg.heads), sr_ratios=list(cfg.sr_ratios),
                           mlp_ratios=list(cfg.mlp_ratios), decoder_hidden_size=HEAD_WIDTH[variant],
                           patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2], hidden_act="gelu")


def hf_segformer_with_weights_of(net: torch.nn.Module) -> torch.nn.Module:
    """A ``transformers`` ``SegformerForSemanticSegmentation`` of the same variant as our SegFormer ``net``
    carrying ``net``'s weights -- the peer for benchmarks and comparisons (HF's LayerNorm eps differs: see
    the module docstring)."""
    from transformers import SegformerForSemanticSegmentation

    model = SegformerForSemanticSegmentation(hf_segformer_config(net.variant, net.num_classes)).eval()
    model.load_state_dict(official_to_hf_segformer(net.state_dict(), list(model.state_dict())), strict=True)
    return model
