"""Convert Hugging Face ``transformers`` ``DPTForDepthEstimation`` state_dicts to the official DPT keys.

Key table: ``shared/design/dpt.md`` section 13. The HF model is a module-for-module port of the same
checkpoints, so the conversion is a renaming plus three structural changes:

- the separate ``query``/``key``/``value`` Linears are concatenated (rows ``[q; k; v]``) into ``qkv``;
- the fusion stages are numbered in reverse (HF ``fusion_stage.layers.0`` is ``scratch.refinenet4``);
- the unused ImageNet classifier ``pretrained.model.head`` has no HF counterpart and is filled with
  zeros (``[1000, C]`` / ``[1000]``) so that strict loading succeeds.

Known, documented difference: HF's BiT (hybrid) standardises conv weights as
``(W − mean) / sqrt(var + 1e-8)`` while the official timm 0.4.5 network (ours) uses
``(W − mean) / (std + 1e-5)``; converted hybrid weights therefore give slightly different outputs
than HF's own model (measured ≈ 3e-5 of a 0.14 output for random weights). HF's ViT LayerNorm eps
(``layer_norm_eps``, 1e-12 by default) differs from the official 1e-6 as well (negligible).

Only ``torch`` state_dicts are handled; ``.safetensors`` files must be read by the caller.
"""
from __future__ import annotations

import re
from types import MappingProxyType
from typing import Callable, Mapping

import torch

from .hf_keys import fused, regroup, to_hf

#: Prefixes of a ``DPTForDepthEstimation`` state_dict.
HF_PREFIXES = ("dpt.", "neck.", "head.")

_VIT = "pretrained.model."
_CNN = "pretrained.model.patch_embed.backbone."
#: Rows of the official (unused) ImageNet classifier.
IMAGENET_CLASSES = 1000

# (HF pattern, official replacement) for every key that is a pure rename; applied with re.fullmatch.
_RENAMES: tuple[tuple[str, str | Callable[[re.Match[str]], str]], ...] = (
    (r"dpt\.embeddings\.cls_token", _VIT + "cls_token"),
    (r"dpt\.embeddings\.position_embeddings", _VIT + "pos_embed"),
    (r"dpt\.embeddings\.patch_embeddings\.projection\.(weight|bias)", _VIT + r"patch_embed.proj.\1"),
    (r"dpt\.embeddings\.projection\.(weight|bias)", _VIT + r"patch_embed.proj.\1"),
    (r"dpt\.embeddings\.backbone\.bit\.embedder\.convolution\.weight", _CNN + "stem.conv.weight"),
    (r"dpt\.embeddings\.backbone\.bit\.embedder\.norm\.(weight|bias)", _CNN + r"stem.norm.\1"),
    (r"dpt\.embeddings\.backbone\.bit\.encoder\.stages\.(\d+)\.layers\.(\d+)\.(.+)", _CNN + r"stages.\1.blocks.\2.\3"),
    (r"dpt\.encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", _VIT + r"blocks.\1.attn.proj.\2"),
    (r"dpt\.encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)", _VIT + r"blocks.\1.mlp.fc1.\2"),
    (r"dpt\.encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)", _VIT + r"blocks.\1.mlp.fc2.\2"),
    (r"dpt\.encoder\.layer\.(\d+)\.layernorm_before\.(weight|bias)", _VIT + r"blocks.\1.norm1.\2"),
    (r"dpt\.encoder\.layer\.(\d+)\.layernorm_after\.(weight|bias)", _VIT + r"blocks.\1.norm2.\2"),
    (r"dpt\.layernorm\.(weight|bias)", _VIT + r"norm.\1"),
    (r"neck\.reassemble_stage\.readout_projects\.(\d+)\.0\.(weight|bias)",
     lambda m: f"pretrained.act_postprocess{int(m[1]) + 1}.0.project.0.{m[2]}"),
    (r"neck\.reassemble_stage\.layers\.(\d+)\.projection\.(weight|bias)",
     lambda m: f"pretrained.act_postprocess{int(m[1]) + 1}.3.{m[2]}"),
    (r"neck\.reassemble_stage\.layers\.(\d+)\.resize\.(weight|bias)",
     lambda m: f"pretrained.act_postprocess{int(m[1]) + 1}.4.{m[2]}"),
    (r"neck\.convs\.(\d+)\.weight", lambda m: f"scratch.layer{int(m[1]) + 1}_rn.weight"),
    (r"neck\.fusion_stage\.layers\.(\d+)\.residual_layer([12])\.convolution([12])\.(weight|bias)",
     lambda m: f"scratch.refinenet{4 - int(m[1])}.resConfUnit{m[2]}.conv{m[3]}.{m[4]}"),
    (r"neck\.fusion_stage\.layers\.(\d+)\.projection\.(weight|bias)",
     lambda m: f"scratch.refinenet{4 - int(m[1])}.out_conv.{m[2]}"),
    (r"head\.head\.([024])\.(weight|bias)", r"scratch.output_conv.\1.\2"),
)

#: ``transformers.DPTConfig`` arguments of the released ``Intel/dpt-hybrid-midas`` / ``Intel/dpt-large``
#: architectures, per our network name (for building HF peers in tests and benchmarks).
HF_CONFIGS: Mapping[str, Mapping[str, object]] = MappingProxyType({
    "dpt_hybrid_midas": MappingProxyType(dict(
        is_hybrid=True, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        neck_hidden_sizes=(256, 512, 768, 768), reassemble_factors=(1, 1, 1, 0.5),
        backbone_out_indices=(2, 5, 8, 11), image_size=384, patch_size=16, readout_type="project",
        fusion_hidden_size=256)),
    "dpt_large_midas": MappingProxyType(dict(
        is_hybrid=False, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        neck_hidden_sizes=(256, 512, 1024, 1024), reassemble_factors=(4, 2, 1, 0.5),
        backbone_out_indices=(5, 11, 17, 23), image_size=384, patch_size=16, readout_type="project",
        fusion_hidden_size=256)),
})

_QKV = re.compile(r"dpt\.encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)")


def is_hf_state_dict(state_dict: Mapping[str, object]) -> bool:
    """True when the keys look like a ``DPTForDepthEstimation`` state_dict."""
    return bool(state_dict) and all(str(k).startswith(HF_PREFIXES) for k in state_dict)


#: DPT's fused projection: its parts in the official order.
_QKV_ORDER = ("query", "key", "value")


def convert_hf_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official-key state_dict from a HF ``DPTForDepthEstimation`` one (see the module docstring).

    Raises:
        ValueError: a key has no official counterpart (e.g. an auxiliary segmentation head), or a
            block's q/k/v set is incomplete.
    """
    out, qkv = regroup(state_dict, _RENAMES, _QKV, lambda m: ((int(m[1]), m[3]), m[2]), "DPT")
    for (block, kind), parts in sorted(qkv.items()):
        out[f"{_VIT}blocks.{block}.attn.qkv.{kind}"] = fused(parts, _QKV_ORDER, f"block {block} {kind}")
    cls_token = out.get(_VIT + "cls_token")
    if cls_token is not None:
        dim, like = cls_token.shape[-1], cls_token
        out.setdefault(_VIT + "head.weight", like.new_zeros(IMAGENET_CLASSES, dim))
        out.setdefault(_VIT + "head.bias", like.new_zeros(IMAGENET_CLASSES))
    return out


def official_to_hf_state_dict(official: Mapping[str, torch.Tensor], hf_keys: list[str]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`convert_hf_state_dict` for the keys of a given HF model (``hf_keys``):
    official weights in HF layout, so both implementations can run *the same* weights."""
    return to_hf(official, hf_keys, _RENAMES, _QKV, lambda m: (f"{_VIT}blocks.{m[1]}.attn.qkv.{m[3]}", m[2]),
                 _QKV_ORDER, "DPT")


def hf_model_with_weights_of(net: torch.nn.Module) -> torch.nn.Module:
    """A ``transformers`` ``DPTForDepthEstimation`` of the same architecture as our ``net`` (MiDaS
    hybrid or large) carrying ``net``'s weights — the peer for benchmarks and comparisons."""
    from transformers import DPTConfig, DPTForDepthEstimation

    config_name = "dpt_hybrid_midas" if "hybrid" in net.name else "dpt_large_midas"
    model = DPTForDepthEstimation(DPTConfig(**HF_CONFIGS[config_name])).eval()
    keys = list(model.state_dict())
    model.load_state_dict(official_to_hf_state_dict(net.state_dict(), keys), strict=True)
    return model
