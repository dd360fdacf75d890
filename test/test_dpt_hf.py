"""Hugging Face ``DPTForDepthEstimation`` state_dicts convert to official keys and give the same network.

CI installs ``transformers``; the import guard only keeps a ROS install without it from erroring.
"""
from __future__ import annotations

from typing import Callable

import pytest
import torch

from dense_perception.networks import build_network, load_weights
from dense_perception.networks.dpt_hf import HF_CONFIGS, convert_hf_state_dict, is_hf_state_dict

transformers = pytest.importorskip(
    "transformers", reason="Hugging Face conversion tests need `transformers` (installed in CI)"
)

HF_ENTRIES = {"dpt_hybrid_midas": 414, "dpt_large_midas": 462}

# Relative bound on the head output before the final ReLU: max|ours − hf| <= REL · max(1, max|hf|).
# ViT-L: the same network (only HF's LayerNorm eps 1e-12 vs the official 1e-6 differs); measured ≈ 2e-7.
# Hybrid: HF's BiT standardises conv weights as (W − mean)/sqrt(var + 1e-8), the official timm 0.4.5
# network (ours) as (W − mean)/(std + 1e-5). Same keys, slightly different networks: with these random
# weights the gap measured ≈ 1e-5 … 3e-5 (of |output| ≈ 0.1). It stays inside the same bound; were it
# larger, that would be a real mapping error, not this documented difference.
REL = 1e-4


def _hf_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.DPTConfig(**HF_CONFIGS[name])  # the released Intel/dpt-* architectures
    return transformers.DPTForDepthEstimation(config).eval()


def _head_pre_relu(conv: torch.nn.Module, run: Callable[[], object]) -> torch.Tensor:
    """Output of the head's last 1×1 ``conv`` (before the non-negative ReLU) during ``run()``."""
    seen: list[torch.Tensor] = []
    handle = conv.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("name", ["dpt_hybrid_midas", "dpt_large_midas"])
def test_hf_state_dict_loads_strictly_and_matches(name: str) -> None:
    hf = _hf_model(name)
    hf_state = hf.state_dict()
    assert len(hf_state) == HF_ENTRIES[name] and is_hf_state_dict(hf_state)
    converted = convert_hf_state_dict(hf_state)
    assert len(converted) == 368

    ours = build_network(name)
    load_weights(ours, hf_state)  # adapt_state_dict converts; strict key and shape check
    assert torch.equal(ours.pretrained.model.head.weight, torch.zeros(1000, HF_CONFIGS[name]["hidden_size"]))
    block0 = ours.pretrained.model.blocks[0].attn.qkv.weight
    attention = hf.dpt.encoder.layer[0].attention.attention
    assert torch.equal(block0, torch.cat([attention.query.weight, attention.key.weight, attention.value.weight]))

    x = torch.randn(1, 3, 384, 384, generator=torch.Generator().manual_seed(3))
    theirs_pre = _head_pre_relu(hf.head.head[4], lambda: hf(pixel_values=x))
    ours_pre = _head_pre_relu(ours.scratch.output_conv[4], lambda: ours(x))
    with torch.no_grad():
        depth = ours(x)
    gap = float((ours_pre - theirs_pre).abs().max())
    assert gap <= REL * max(1.0, float(theirs_pre.abs().max())), f"{name}: pre-ReLU gap {gap:.3g}"
    torch.testing.assert_close(depth, torch.relu(ours_pre).squeeze(1))


def test_official_state_dict_is_left_unchanged() -> None:
    net = build_network("dpt_hybrid_midas")
    state = net.state_dict()
    assert net.adapt_state_dict(state) is state
    assert not is_hf_state_dict(state)


def test_unknown_hf_keys_are_reported() -> None:
    with pytest.raises(ValueError, match="no official counterpart"):
        convert_hf_state_dict({"head.auxiliary.weight": torch.zeros(1), "dpt.embeddings.cls_token": torch.zeros(1, 1, 8)})
