"""ViT-CoMer without the shared references: published sizes, structure, the multiple-of-32 rule, the
position-embedding resize, the CNN token layout and ISR rejection. A few seconds on 2 cores."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dense_perception.networks import CheckpointError, ISRSetting, available_networks, build_network, load_weights
from dense_perception.networks.common import fill_reference_weights
from dense_perception.networks.vit_comer import CnnLevels, ViTCoMer, vit_comer_size_problem

#: Parameters (total / backbone) from the README and shared/design/vit_comer.md §2 (aux head included).
PUBLISHED = {"t": (38_715_148, 10_619_360), "s": (61_391_500, 31_280_480), "b": (144_745_132, 110_603_648)}


def _on_meta(variant: str) -> ViTCoMer:
    with torch.device("meta"):
        return build_network(f"vit_comer_{variant}_upernet_ade20k")


@pytest.fixture(scope="module")
def tiny() -> ViTCoMer:
    net = build_network("vit_comer_t_upernet_ade20k")
    load_weights(net, fill_reference_weights(net))
    return net


@pytest.mark.parametrize("variant", sorted(PUBLISHED))
def test_parameter_counts_match_the_readme(variant: str) -> None:
    net = _on_meta(variant)
    total, backbone = PUBLISHED[variant]
    assert sum(p.numel() for p in net.parameters()) == total
    assert sum(p.numel() for p in net.backbone.parameters()) == backbone
    assert len(net.state_dict()) == 752
    assert {k.split(".")[0] for k in net.state_dict()} == {"backbone", "decode_head", "auxiliary_head"}


def test_registry_names() -> None:
    assert {n for n in available_networks("segmentation") if n.startswith("vit_comer")} == {
        f"vit_comer_{v}_upernet_ade20k" for v in PUBLISHED}


@pytest.mark.parametrize(("variant", "heads", "value_width", "mrfp_hidden"), [
    ("t", 6, 192, 1152), ("s", 6, 384, 576), ("b", 12, 384, 768)])
def test_deformable_attention_and_mrfp_widths(variant: str, heads: int, value_width: int, mrfp_hidden: int) -> None:
    cti = _on_meta(variant).backbone.interactions[0]
    assert cti.cti_tov.attn.heads == heads and cti.cti_tov.attn.value_proj.out_features == value_width
    assert cti.cti_tov.attn.sampling_offsets.out_features == heads * 3 * 4 * 2
    assert cti.mrfp.fc1.out_features == mrfp_hidden


def test_norm_eps_are_structural() -> None:
    net = _on_meta("t")
    layer_norms = [m for m in net.modules() if isinstance(m, nn.LayerNorm)]
    batch_norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(layer_norms) == 12 * 2 + 4 * 3 + 4 * 5 + 4 * 6 and all(m.eps == 1e-6 for m in layer_norms)
    assert batch_norms and all(m.eps == 1e-5 for m in batch_norms)
    assert [i for i, cti in enumerate(net.backbone.interactions) if cti.extra_CTIs is not None] == [3]


def test_cnn_token_layout() -> None:
    levels = CnnLevels(12, 16)  # a 192x256 input
    assert levels.shapes == ((24, 32), (12, 16), (6, 8)) and levels.counts == (768, 192, 48)
    c = torch.arange(1008.0).reshape(1, 1008, 1).expand(1, 1008, 2)
    fine, middle, coarse = levels.maps(c)
    assert fine[0, 0, 0, 1] == 1 and middle[0, 0, 1, 0] == 768 + 16 and coarse[0, 0, 5, 7] == 1007
    added = levels.add_vit_tokens(c, torch.full((1, 192, 2), 0.5))
    assert (added - c).sum(-1).nonzero()[:, 1].tolist() == list(range(768, 960))


def test_position_embedding_resize(tiny: ViTCoMer) -> None:
    """Class slot dropped; at the 14×14 training grid an exact identity; elsewhere bicubic, which
    (unlike bilinear) overshoots a step."""
    backbone = tiny.backbone
    original = backbone.pos_embed.detach().clone()
    torch.testing.assert_close(backbone.position_embedding((14, 14)), original[:, 1:], rtol=0, atol=0)
    step = torch.zeros(1, 197, 192)
    step[:, 1:] = (torch.arange(196) % 14 >= 7).float()[None, :, None]  # 0 left half, 1 right half
    try:
        with torch.no_grad():
            backbone.pos_embed.copy_(step)
            resized = backbone.position_embedding((24, 32))
    finally:
        with torch.no_grad():
            backbone.pos_embed.copy_(original)
    assert resized.shape == (1, 24 * 32, 192)
    assert resized.max() > 1.0 and resized.min() < 0.0


def test_multiple_of_32_rule(tiny: ViTCoMer) -> None:
    assert vit_comer_size_problem(384, 512) is None
    for height, width in ((240, 240), (200, 296), (64, 48)):
        with pytest.raises(ValueError, match="multiples of 32"):
            tiny(torch.zeros(1, 3, height, width))


def test_small_forward(tiny: ViTCoMer) -> None:
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = tiny.forward_features(x)
        logits = tiny(x)
    assert [tuple(f.shape[2:]) for f in features] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert logits.shape == (1, 150, 16, 24) and torch.isfinite(logits).all()


def test_isr_does_not_apply(tiny: ViTCoMer) -> None:
    assert tiny.isr is None
    assert tiny.set_isr(1) is None, "ratio 1 is the network as trained: no setting"
    with pytest.raises(ValueError, match="ISR does not apply to ViT-CoMer"):
        tiny.set_isr(3)
    with pytest.raises(ValueError, match=r"ISR does not apply to ViT-CoMer.*got \[8,4,2,1\]-\[1,2,4\]"):
        tiny.set_isr(ISRSetting())  # EDAFormer's training setting means nothing here


def test_wrong_variant_checkpoint_names_the_keys(tiny: ViTCoMer) -> None:
    with pytest.raises(CheckpointError, match=r"wrong shape.*backbone\.blocks\.0\.attn\.proj\.bias"):
        load_weights(_on_meta("s"), tiny.state_dict())
