"""EDAFormer structure, ISR switching and input validation (the golden match is in *_reference.py)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dense_perception.networks import ISRSetting, available_networks, build_network, load_weights, network_spec
from dense_perception.networks.common import fill_reference_weights
from dense_perception.networks.edaformer import EmbeddingFreeAttention, FeedForward

# Official parameter counts (conv_seg included), shared/design/edaformer.md section 4.
PARAMS = {
    "edaformer_t_ade20k": 4_949_264, "edaformer_t_cityscapes": 4_915_466, "edaformer_t_cocostuff": 4_954_682,
    "edaformer_b_ade20k": 29_457_516, "edaformer_b_cityscapes": 29_339_878,
}
CLASSES = {"ade20k": 150, "cityscapes": 19, "cocostuff": 171}


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    net = build_network("edaformer_t_ade20k")
    load_weights(net, fill_reference_weights(net))
    return net


def test_registry_lists_all_six_edaformer_networks() -> None:
    names = [n for n in available_networks("segmentation") if network_spec(n).family == "edaformer"]
    assert names == sorted(f"edaformer_{v}_{d}" for v in "tb" for d in CLASSES)
    with pytest.raises(ValueError, match="unknown network 'edaformer_x'.*edaformer_t_ade20k"):
        build_network("edaformer_x")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if "_b_" in n else n for n in sorted(PARAMS)])
def test_parameter_and_entry_counts(name: str) -> None:
    net = build_network(name)
    assert sum(p.numel() for p in net.parameters()) == PARAMS[name]
    assert len(net.state_dict()) == (354 if "_t_" in name else 564)
    assert net.decode_head.linear_pred.out_channels == CLASSES[name.split("_")[-1]]
    assert not net.training, "build_network returns eval mode"


@pytest.mark.slow
def test_layernorm_eps_and_activations_are_the_official_ones() -> None:
    net = build_network("edaformer_b_ade20k")
    for name, mod in net.named_modules():
        if isinstance(mod, nn.LayerNorm):
            in_encoder_block = name.startswith("backbone.block") or (
                name.startswith("backbone.norm"))
            expected = 1e-6 if in_encoder_block else 1e-5
            assert mod.eps == expected, f"{name}: eps {mod.eps}, official {expected}"
        if isinstance(mod, nn.BatchNorm2d):
            assert mod.eps == 1e-5
    enc_attn = net.backbone.block1[0].attn
    dec_attn = net.decode_head.attn4.attn
    assert enc_attn.norm is None and isinstance(dec_attn.norm, nn.LayerNorm)
    assert net.backbone.block1[0].mlp.relu and not net.decode_head.attn2.mlp.relu
    assert net.decode_head.linear_fuse.conv.bias is None
    # FFN hidden widths: floor(3.8 C) for T
    t = build_network("edaformer_t_ade20k")
    assert [getattr(t.backbone, f"block{i}")[0].mlp.fc1.out_features for i in range(1, 5)] == [121, 243, 486, 972]


@pytest.mark.parametrize("size", [pytest.param((512, 512), marks=pytest.mark.slow), (100, 150), (77, 203),
                                  (33, 65), (64, 64)])
def test_output_stride_is_8_for_any_size(tiny: nn.Module, size: tuple[int, int]) -> None:
    h, w = size
    with torch.no_grad():
        out = tiny(torch.randn(2, 3, h, w))
    assert out.shape == (2, 150, math.ceil(h / 8), math.ceil(w / 8))
    assert torch.isfinite(out).all()


def test_isr_switches_between_forwards_without_reload(tiny: nn.Module) -> None:
    x = torch.randn(1, 3, 128, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = tiny(x)
        assert tiny.set_isr(ratio=2) == ISRSetting((16, 8, 4, 2), (2, 4, 8))
        assert tiny.isr == ISRSetting((16, 8, 4, 2), (2, 4, 8))
        reduced = tiny(x)
        tiny.set_isr(encoder=[16, 8, 2, 1], decoder=[3, 6, 9])  # not expressible in the official code
        assert tiny.isr.decoder == (3, 6, 9)
        assert tiny.decode_head.attn2.attn.pool == 9 and tiny.decode_head.attn44.attn.pool == 3
        assert tiny.backbone.block3[9].attn.pool == 2
        odd = tiny(x)
        tiny.set_isr(ratio=1)
        again = tiny(x)
    assert tiny.isr.is_training
    assert not torch.allclose(base, reduced) and not torch.allclose(reduced, odd)
    assert torch.equal(base, again), "ratio 1 restores the training output exactly"


def test_isr_ratio_matches_explicit_setting(tiny: nn.Module) -> None:
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        tiny.set_isr(ratio=2)
        a = tiny(x)
        tiny.set_isr(encoder=[16, 8, 4, 2], decoder=[2, 4, 8])
        b = tiny(x)
        tiny.set_isr(ratio=2, decoder=[2, 4, 8])
        c = tiny(x)
        tiny.set_isr()
    assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("bad", [
    dict(ratio=0), dict(ratio=-1), dict(ratio=1.5), dict(ratio="2"), dict(ratio=True),
    dict(encoder=[16, 8, 2]), dict(decoder=[2, 4, 0]), dict(encoder=[16, 8, 2, 1.5]), dict(decoder=[2, 4, 8, 1]),
])
def test_invalid_isr_values_raise_at_once(tiny: nn.Module, bad: dict) -> None:
    before = tiny.isr
    with pytest.raises(ValueError, match="ISR"):
        tiny.set_isr(**bad)
    assert tiny.isr == before, "a rejected setting changes nothing"


def test_isr_too_large_for_the_feature_map_is_reported_before_and_in_forward(tiny: nn.Module) -> None:
    # 64x64 input: maps 16/8/4/2, so a stage-4 pool of 4 cannot run; at ratio 4 stage 1 fails first.
    candidate = ISRSetting((8, 4, 2, 4), (1, 2, 4))
    with pytest.raises(ValueError, match=r"encoder stage 4 has a 2x2 feature map.*ratio 4$"):
        tiny.check_isr(64, 64, candidate)
    with pytest.raises(ValueError, match=r"encoder stage 1 has a 16x16 feature map.*ratio 32$"):
        tiny.check_isr(64, 64, ISRSetting.from_ratio(4))
    tiny.check_isr(512, 512, ISRSetting.from_ratio(4))  # fits at 512x512
    tiny.set_isr(candidate)
    try:
        with pytest.raises(ValueError, match=r"encoder stage 4 has a 2x2 feature map"):
            tiny(torch.randn(1, 3, 64, 64))
        with pytest.raises(ValueError, match=r"decoder level c2 has a 8x8 feature map.*ratio 9"):
            tiny.check_isr(64, 64, ISRSetting((8, 4, 2, 1), (1, 2, 9)))
    finally:
        tiny.set_isr(ratio=1)


@pytest.mark.parametrize("bad, error, match", [
    ([[1.0]], TypeError, "torch.Tensor"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), TypeError, "floating-point"),
    (torch.zeros(3, 32, 32), ValueError, "4-D"),
    (torch.zeros(1, 4, 32, 32), ValueError, "3 channels"),
    (torch.zeros(1, 3, 0, 32), ValueError, "empty"),
    (torch.zeros(0, 3, 32, 32), ValueError, "empty"),
])
def test_bad_input_gives_clear_errors(tiny: nn.Module, bad: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        tiny(bad)


def test_attention_pools_with_floor_mode_like_avgpool2d() -> None:
    """Leftover rows/columns are dropped, never padded (pitfall 8), using the SDPA path."""
    torch.manual_seed(0)
    attn = EmbeddingFreeAttention(dim=8, heads=2, pool=3, decoder=False).eval()
    h, w = 7, 10
    x = torch.randn(1, h * w, 8)
    with torch.no_grad():
        out = attn(x, h, w)
        # naive reference: explicit pooling, explicit softmax
        m = x.transpose(1, 2).reshape(1, 8, h, w)
        kv = attn.sr(nn.AvgPool2d(3, 3)(m)).flatten(2).transpose(1, 2)  # [1, 2*3, 8]
        q = x.reshape(1, h * w, 2, 4).transpose(1, 2)
        k = kv.reshape(1, 6, 2, 4).transpose(1, 2)
        weights = (q @ k.transpose(-1, -2) * 4 ** -0.5).softmax(-1)
        ref = attn.proj((weights @ k).transpose(1, 2).reshape(1, h * w, 8))
    assert torch.allclose(out, ref, atol=1e-6)


@pytest.mark.parametrize("relu", [True, False])  # encoder, decoder
def test_ffn_on_the_map_is_the_ffn_on_tokens(relu: bool) -> None:
    """The exported graph's FFN layout (1x1 convolutions on the map) computes the torch layout's FFN."""
    torch.manual_seed(0)
    ffn = FeedForward(dim=16, hidden=61, relu=relu).eval()
    h, w = 6, 9
    x = torch.randn(2, h * w, 16)
    with torch.no_grad():
        on_tokens = ffn(x, h, w)
        on_map = ffn.forward_on_map(x, h, w)
    assert on_map.shape == on_tokens.shape == x.shape
    assert torch.allclose(on_map, on_tokens, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_attention_uses_the_fused_kernel_not_the_score_matrix(tiny: nn.Module) -> None:
    """A non-unit last-dim stride makes SDPA fall back to the math path (1 GB/head at 1024x2048)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        tiny(torch.randn(1, 3, 64, 64))
    names = {e.key for e in prof.key_averages()}
    assert "aten::_scaled_dot_product_attention_math" not in names
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in names


def _naive_attention(attn: EmbeddingFreeAttention, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """EFA written out: average-pool the token map by ``attn.pool`` (floor mode), 1x1 conv, for the
    decoder LayerNorm (eps 1e-5) + exact GELU; keys = values; softmax(q k^T / sqrt(d)) v per head."""
    b, n, c = x.shape
    d = c // attn.heads
    kv = x.transpose(1, 2).reshape(b, c, h, w)
    if attn.pool > 1:
        kv = nn.AvgPool2d(attn.pool, attn.pool)(kv)
    kv = attn.sr(kv).flatten(2).transpose(1, 2)
    if attn.norm is not None:
        kv = nn.functional.gelu(nn.functional.layer_norm(kv, (c,), attn.norm.weight, attn.norm.bias, 1e-5))
    q = x.reshape(b, n, attn.heads, d).transpose(1, 2)
    k = kv.reshape(b, -1, attn.heads, d).transpose(1, 2)
    weights = (q @ k.transpose(-1, -2) * d ** -0.5).softmax(-1)
    return attn.proj((weights @ k).transpose(1, 2).reshape(b, n, c))


@pytest.mark.parametrize("decoder, heads, pool", [(True, 2, 2), (True, 4, 1), (False, 4, 1), (False, 1, 4)])
def test_attention_matches_the_written_out_formula(decoder: bool, heads: int, pool: int) -> None:
    torch.manual_seed(1)
    attn = EmbeddingFreeAttention(dim=16, heads=heads, pool=pool, decoder=decoder).eval()
    if decoder:  # a LayerNorm that is not the identity
        nn.init.normal_(attn.norm.weight, 1.0, 0.2)
        nn.init.normal_(attn.norm.bias, 0.0, 0.2)
    assert (attn.heads, attn.pool, attn.norm is not None) == (heads, pool, decoder)
    assert attn.norm is None or attn.norm.eps == 1e-5
    h, w = 9, 6
    x = torch.randn(2, h * w, 16)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, h, w), _naive_attention(attn, x, h, w), rtol=1e-5, atol=1e-6)


def test_set_isr_reaches_every_attention_of_each_level(tiny: nn.Module) -> None:
    setting = ISRSetting((16, 8, 2, 3), (5, 6, 7))
    try:
        assert tiny.set_isr(setting) is setting
        encoder = [[blk.attn.pool for blk in getattr(tiny.backbone, f"block{i}")] for i in range(1, 5)]
        assert encoder == [[16] * 2, [8] * 2, [2] * 10, [3] * 2]
        head = tiny.decode_head
        decoder = [[getattr(head, name).attn.pool for name in names]
                   for names in (("attn4", "attn44", "attn444"), ("attn3", "attn33"), ("attn2",))]
        assert decoder == [[5] * 3, [6] * 2, [7]]
        assert tiny.isr == setting
        # ratio and explicit values combine: the ratio fills what is not given
        assert tiny.set_isr(2, decoder=[1, 1, 1]) == ISRSetting((16, 8, 4, 2), (1, 1, 1))
        assert tiny.set_isr(3, encoder=[8, 4, 2, 1]) == ISRSetting((8, 4, 2, 1), (3, 6, 12))
        assert tiny.backbone.block4[1].attn.pool == 1 and tiny.decode_head.attn2.attn.pool == 12
    finally:
        tiny.set_isr()
    assert tiny.isr.is_training


def test_forward_checks_the_isr_against_height_and_width(tiny: nn.Module) -> None:
    """A 64x32 input has a 2x1 stage-4 map: a stage-4 pool of 2 fits the height, not the width."""
    tiny.set_isr(encoder=[8, 4, 2, 2])
    try:
        with pytest.raises(ValueError, match=r"64x32 input \(it needs at least 33x33\): encoder stage 4 has a 2x1 feature map"):
            tiny(torch.zeros(1, 3, 64, 32))
        with pytest.raises(ValueError, match=r"32x64 input \(it needs at least 33x33\): encoder stage 4 has a 1x2 feature map"):
            tiny(torch.zeros(1, 3, 32, 64))
        tiny.check_isr(64, 64)  # the current setting fits 64x64
        with pytest.raises(ValueError, match="64x32 input"):
            tiny.check_isr(64, 32)
        tiny.check_isr(64, 32, ISRSetting())  # an explicit setting is checked instead of the current one
    finally:
        tiny.set_isr()
