"""HRViT without the shared references: structure, published sizes, the input-size rule, the stripe
attention's padding mask, ISR rejection and checkpoint mismatches. A few seconds on 2 cores."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dense_perception.networks import CheckpointError, available_networks, build_network, load_weights, network_spec
from dense_perception.networks.common import fill_reference_weights
from dense_perception.networks.hrvit import (
    VARIANTS, DiversityEnhancedShortcut, fit_hrvit_side, half_heads, hrvit_side_fits, hrvit_size_problem,
    stripe_attention,
)

#: (parameters, state_dict entries) per registry name, from shared/design/hrvit.md §5-6 (the README's
#: 8.2M/8.1M/20.8M/28.7M/28.6M/35.9M/49.7M; b3-UperNet 55.8M vs the README's 55.4M, unexplained there).
PUBLISHED = {
    "hrvit_b1_segformer_ade20k": (8_183_118, 1449), "hrvit_b1_segformer_cityscapes": (8_149_451, 1449),
    "hrvit_b1_upernet_ade20k": (35_952_100, 1515),
    "hrvit_b2_segformer_ade20k": (20_809_782, 1557), "hrvit_b2_segformer_cityscapes": (20_776_115, 1557),
    "hrvit_b2_upernet_ade20k": (49_696_972, None),
    "hrvit_b3_segformer_ade20k": (28_724_494, None), "hrvit_b3_segformer_cityscapes": (28_623_755, None),
    "hrvit_b3_upernet_ade20k": (55_815_588, 1677),
}
BACKBONE_PARAMS = {"b1": 7_758_008, "b2": 20_310_944, "b3": 25_507_960}


def _on_meta(name: str) -> nn.Module:
    with torch.device("meta"):
        return build_network(name)


@pytest.fixture(scope="module")
def b1() -> nn.Module:
    net = build_network("hrvit_b1_segformer_ade20k")
    load_weights(net, fill_reference_weights(net))
    return net


def test_registry_lists_every_config() -> None:
    names = {n for n in available_networks("segmentation") if n.startswith("hrvit")}
    assert names == set(PUBLISHED)
    assert network_spec("hrvit_b2_segformer_cityscapes").kwargs["num_classes"] == 19
    assert network_spec("hrvit_b3_upernet_ade20k").family == "hrvit"


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_the_published_models(name: str) -> None:
    net = _on_meta(name)
    params, entries = PUBLISHED[name]
    assert sum(p.numel() for p in net.parameters()) == params
    assert sum(p.numel() for p in net.backbone.parameters()) == BACKBONE_PARAMS[net.variant]
    if entries is not None:
        assert len(net.state_dict()) == entries
    prefixes = {k.split(".")[0] for k in net.state_dict()}
    assert prefixes == ({"backbone", "decode_head", "auxiliary_head"} if net.head == "upernet"
                        else {"backbone", "decode_head"})


def test_b2_heads_take_the_240_channel_branch_and_b3_upernet_the_b3_backbone() -> None:
    """Design §6: the two fixes that make the broken official configs run."""
    b2 = _on_meta("hrvit_b2_upernet_ade20k")
    assert b2.decode_head.lateral_convs[2].conv.in_channels == 240
    assert b2.auxiliary_head.convs[0].conv.in_channels == 240
    assert _on_meta("hrvit_b2_segformer_ade20k").decode_head.convs[2].conv.in_channels == 240
    b3 = _on_meta("hrvit_b3_upernet_ade20k")
    assert [c.conv.in_channels for c in b3.decode_head.lateral_convs] == [64, 128, 256]


def test_norm_eps_and_activations_are_structural() -> None:
    net = _on_meta("hrvit_b1_upernet_ade20k")
    norms = [m for m in net.modules() if isinstance(m, (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d))]
    assert norms and all(m.eps == 1e-5 for m in norms)
    upsamples = [m for m in net.modules() if isinstance(m, nn.Upsample)]
    assert upsamples and all(m.mode == "nearest" for m in upsamples)


@pytest.mark.parametrize(("variant", "heads", "widths"), [
    ("b1", (1, 1, 2, 4), (16, 32, 32, 32)),  # branch 0: one head of 16 (half narrower than dim_head)
    ("b2", (1, 2, 5, 8), (24, 24, 24, 24)),
    ("b3", (1, 2, 4, 8), (32, 32, 32, 32)),
])
def test_heads_per_stripe_half(variant: str, heads: tuple[int, ...], widths: tuple[int, ...]) -> None:
    cfg = VARIANTS[variant]
    got = [half_heads(c, cfg.dim_head) for c in cfg.widths]
    assert tuple(got) == heads
    assert tuple(c // 2 // h for c, h in zip(cfg.widths, got)) == widths


@pytest.mark.parametrize(("dim", "p", "k"), [(32, 8, 4), (64, 8, 8), (128, 16, 8), (256, 16, 16), (48, 8, 6),
                                             (240, 16, 15), (384, 16, 24), (512, 32, 16)])
def test_des_factorisation(dim: int, p: int, k: int) -> None:
    des = DiversityEnhancedShortcut(dim)
    assert (des.p, des.k) == (p, k)
    assert des.proj_right.weight.shape == (p, p) and des.proj_left.weight.shape == (k, k)


def _stripes_without_padding(q: torch.Tensor, v: torch.Tensor, stripe: int, heads: int) -> torch.Tensor:
    """Oracle: attention inside each stripe of real rows only (the last stripe simply shorter)."""
    batch, rows, cols, channels = q.shape
    d = channels // heads
    out = torch.empty_like(q)
    for top in range(0, rows, stripe):
        qs, vs = (t[:, top:top + stripe].reshape(batch, -1, heads, d).transpose(1, 2) for t in (q, v))
        scores = (qs @ vs.transpose(-1, -2)) * d ** -0.5
        out[:, top:top + stripe] = (scores.softmax(-1) @ vs).transpose(1, 2).reshape(batch, -1, cols, channels)
    return out


@pytest.mark.parametrize(("rows", "stripe"), [(16, 7), (9, 7), (21, 7), (8, 2), (5, 1)])
def test_stripe_attention_masks_the_padding(rows: int, stripe: int) -> None:
    g = torch.Generator().manual_seed(rows * stripe)
    q, v = torch.randn(2, rows, 6, 8, generator=g, dtype=torch.float64), torch.randn(2, rows, 6, 8, generator=g,
                                                                                      dtype=torch.float64)
    torch.testing.assert_close(stripe_attention(q, v, stripe, heads=2), _stripes_without_padding(q, v, stripe, 2))


def test_size_rule() -> None:
    assert [n for n in range(1, 97) if hrvit_side_fits(n)] == [29, 30, 31, 32, 61, 62, 63, 64, 93, 94, 95, 96]
    for side in (1, 200, 232, 296, 344, 509, 512, 683):
        fitted = fit_hrvit_side(side)
        assert hrvit_side_fits(fitted) and 0 <= fitted - side < 32
        assert fitted == side or not hrvit_side_fits(side)
        # the rule is what the network needs: stride-4 maps divisible by 8
        assert (math.ceil(math.ceil(fitted / 2) / 2) % 8 == 0)
    assert hrvit_size_problem(512, 512) is None and hrvit_size_problem(221, 349) is None
    assert "512x704" in hrvit_size_problem(512, 683)


def test_invalid_size_is_rejected_before_the_forward(b1: nn.Module) -> None:
    calls = []
    handle = b1.backbone.stem.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(ValueError, match="mod 32"):
            b1(torch.zeros(1, 3, 64, 68))
        with pytest.raises(ValueError, match="mod 32"):
            b1.forward_features(torch.zeros(1, 3, 200, 96))
    finally:
        handle.remove()
    assert not calls
    with pytest.raises(RuntimeError):  # the rule is real: the unchecked backbone breaks in a fusion
        with torch.no_grad():
            b1.backbone(torch.zeros(1, 3, 64, 68))  # branch 1 (9 wide) upsampled to 18, not 17


def test_runs_at_odd_sizes_the_rule_accepts(b1: nn.Module) -> None:
    x = torch.randn(2, 3, 61, 93, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = b1(x)
        features = b1.forward_features(x)
    assert logits.shape == (2, 150, 16, 24) and torch.isfinite(logits).all()
    assert [tuple(f.shape[1:]) for f in features] == [(32, 16, 24), (64, 8, 12), (128, 4, 6), (256, 2, 3)]
    with torch.no_grad():  # batch entries are independent
        torch.testing.assert_close(b1(x[1:]), logits[1:], rtol=1e-4, atol=1e-5)


def test_isr_does_not_apply(b1: nn.Module) -> None:
    assert b1.isr is None
    b1.set_isr(1)
    b1.check_isr(512, 512)
    with pytest.raises(ValueError, match="ISR does not apply to HRViT's cross-shaped stripe attention"):
        b1.set_isr(2)
    with pytest.raises(ValueError, match="ISR does not apply"):
        b1.set_isr(encoder=[16, 8, 2, 1])


def test_wrong_head_or_variant_checkpoint_names_the_keys(b1: nn.Module) -> None:
    upernet = _on_meta("hrvit_b1_upernet_ade20k")
    with pytest.raises(CheckpointError, match=r"unexpected: decode_head\.convs\.0") as info:
        load_weights(upernet, b1.state_dict())
    assert "missing: auxiliary_head" in str(info.value)
    b2 = _on_meta("hrvit_b2_segformer_ade20k")
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_weights(b2, b1.state_dict())


def test_cityscapes_head_has_19_classes() -> None:
    net = _on_meta("hrvit_b1_segformer_cityscapes")
    assert net.num_classes == 19 and net.decode_head.conv_seg.out_channels == 19


def test_torch_engine_runs_it_as_the_plain_network() -> None:
    """The CPU engine swaps the narrow linear layers for oneDNN's (DES applies them to 4-D tensors)."""
    from dense_perception.engines.torch_engine import TorchEngine

    net = build_network("hrvit_b1_segformer_ade20k")
    load_weights(net, fill_reference_weights(net))
    x = torch.randn(1, 3, 61, 93, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = net(x)
    engine = TorchEngine(net, "cpu")
    torch.testing.assert_close(engine.infer(x), expected, rtol=1e-4, atol=1e-5)
    assert "isr" not in engine.describe()
