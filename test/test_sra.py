"""SegFormer, PVTv2 and PVT v1: structure, ISR rules and costs (the golden match is in test_sra_reference.py).

Numbers are from ``shared/design/sra.md``: entry and parameter counts (section 6), ISR validity (8.3) and
GFLOPs with the official tools' convention (8.4).
"""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dense_perception.cli import main
from dense_perception.networks import ISRSetting, build_network, load_weights, network_spec
from dense_perception.networks.common import fill_reference_weights
from dense_perception.networks.cost import count_cost
from dense_perception.networks.isr import EDAFORMER_ISR
from dense_perception.networks.sra.backbones import PlainMlp, SpatialReductionAttention
from dense_perception.networks.sra.pvt import PVT_V1_ISR, PVT_V2_ISR, PVT_V2_LI_ISR
from dense_perception.networks.sra.segformer import SEGFORMER_ISR

# (state_dict entries, parameters): section 6 (parameters to the table's precision).
COUNTS = {
    "segformer_b0_ade20k": (194, 3_772_044), "segformer_b1_ade20k": (194, 13.735e6),
    "segformer_b2_ade20k": (350, 27.481e6), "segformer_b3_ade20k": (590, 47.357e6),
    "segformer_b4_ade20k": (850, 64.128e6), "segformer_b5_ade20k": (1070, 84.728e6),
    "segformer_b0_cityscapes": (194, 3.721e6), "segformer_b1_cityscapes": (194, 13.685e6),
    "pvt_v2_b0_fpn_ade20k": (236, 7.545e6), "pvt_v2_b1_fpn_ade20k": (236, 17.763e6),
    "pvt_v2_b2_fpn_ade20k": (392, 29.117e6), "pvt_v2_b2_li_fpn_ade20k": (404, 26.307e6),
    "pvt_v2_b3_fpn_ade20k": (632, 48.992e6), "pvt_v2_b4_fpn_ade20k": (892, 66.310e6),
    "pvt_v2_b5_fpn_ade20k": (1112, 85.710e6), "pvt_tiny_fpn_ade20k": (216, 16.981e6),
    "pvt_small_fpn_ade20k": (356, 28.238e6), "pvt_medium_fpn_ade20k": (572, 47.960e6),
    "pvt_large_fpn_ade20k": (806, 65.121e6),
}
# GFLOPs of section 8.4 (official tools' convention): (network, input, training, ISR setting, with ISR).
GFLOPS = [
    ("segformer_b0_cityscapes", (1024, 2048), 121.07, [16, 8, 2, 1], 82.38),
    ("segformer_b1_cityscapes", (1024, 2048), 239.31, [16, 8, 2, 1], 161.88),
    ("segformer_b0_ade20k", (512, 512), 8.40, [16, 8, 2, 1], 7.80),
    ("segformer_b1_ade20k", (512, 512), 15.90, [16, 8, 2, 1], 14.68),
    ("segformer_b2_ade20k", (512, 512), 62.39, [16, 8, 2, 1], 60.34),
    ("segformer_b3_ade20k", (512, 512), 79.03, [16, 8, 2, 1], 76.98),
    ("segformer_b4_ade20k", (512, 512), 95.65, [16, 8, 2, 1], 92.78),
    ("segformer_b5_ade20k", (640, 640), 183.30, [16, 8, 2, 1], 177.33),
    ("pvt_v2_b0_fpn_ade20k", (512, 512), 25.02, [16, 8, 2, 1], 24.42),
    ("pvt_v2_b1_fpn_ade20k", (512, 512), 34.20, [16, 8, 2, 1], 32.97),
    ("pvt_v2_b2_fpn_ade20k", (512, 512), 45.71, [16, 8, 2, 1], 43.66),
    ("pvt_v2_b3_fpn_ade20k", (512, 512), 62.35, [16, 8, 2, 1], 60.31),
    ("pvt_v2_b4_fpn_ade20k", (512, 512), 81.21, [16, 8, 2, 1], 78.33),
    ("pvt_v2_b5_fpn_ade20k", (512, 512), 90.96, [16, 8, 2, 1], 88.50),
    ("pvt_v2_b2_li_fpn_ade20k", (512, 512), 40.98, [16, 8, 4, 2], 41.27),
    ("pvt_v2_b2_li_fpn_ade20k", (512, 512), 40.98, [8, 4, 2, 1], 45.05),
]


def _meta(name: str) -> nn.Module:
    with torch.device("meta"):
        return build_network(name)


def _seeded(name: str) -> nn.Module:
    net = build_network(name)
    load_weights(net, fill_reference_weights(net))
    return net


def _forward(net: nn.Module, height: int, width: int, seed: int = 0) -> torch.Tensor:
    with torch.no_grad():
        return net(torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(seed)))


# ---- structure -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(COUNTS))
def test_entry_and_parameter_counts(name: str) -> None:
    entries, params = COUNTS[name]
    net = _meta(name)
    ours = sum(p.numel() for p in net.parameters())
    assert len(net.state_dict()) == entries
    assert abs(ours - params) <= (0 if isinstance(params, int) else 500), f"{ours} vs {params}"  # exact / 0.001 M


@pytest.mark.parametrize("name", ["segformer_b0_ade20k", "pvt_v2_b2_li_fpn_ade20k", "pvt_tiny_fpn_ade20k"])
def test_norm_eps_and_module_layout_are_the_official_ones(name: str) -> None:
    net = _meta(name)
    for path, module in net.named_modules():
        if isinstance(module, nn.LayerNorm):
            official = 1e-5 if (".patch_embed" in f".{path}" or path.endswith("attn.norm")) else 1e-6
            assert module.eps == official, f"{path}: eps {module.eps}, official {official}"
        if isinstance(module, nn.BatchNorm2d):
            assert module.eps == 1e-5
    backbone = net.backbone
    li, v1 = "li" in name, name.startswith("pvt_tiny")
    for stage, sr in zip(range(1, 5), (8, 4, 2, 1)):
        attn = getattr(backbone, f"block{stage}")[0].attn
        if li:
            assert attn.sr.kernel_size == (1, 1) and attn.norm is not None, "li reduces in every stage"
        elif sr == 1:
            assert attn.sr is None and attn.norm is None, "no reduction path where sr = 1"
        else:
            assert attn.sr.kernel_size == attn.sr.stride == (sr, sr) and attn.sr.padding == (0, 0)
    mlp = backbone.block1[0].mlp
    assert isinstance(mlp, PlainMlp) if v1 else (mlp.relu == li)
    assert hasattr(backbone, "norm1") != v1, "PVT v1 has no stage norms"
    if name.startswith("segformer"):
        assert net.decode_head.linear_fuse.conv.bias is None and net.decode_head.linear_pred.bias is not None


def test_attention_reduces_then_pools_with_floor_mode() -> None:
    """sr conv → LayerNorm → ISR average pool (floor, leftovers dropped) → kv, against explicit code."""
    torch.manual_seed(0)
    attn = SpatialReductionAttention(dim=8, heads=2, sr_ratio=2).eval()
    attn.ratio = 6  # sr 2 × pool 3
    h, w = 13, 15  # sr map 6x7, pooled 2x2 (one column dropped)
    x = torch.randn(1, h * w, 8)
    with torch.no_grad():
        out = attn(x, h, w)
        grid = attn.sr(x.transpose(1, 2).reshape(1, 8, h, w))
        tokens = attn.norm(grid.flatten(2).transpose(1, 2))
        pooled = nn.AvgPool2d(3, 3)(tokens.transpose(1, 2).reshape(1, 8, 6, 7)).flatten(2).transpose(1, 2)
        assert pooled.shape == (1, 4, 8) and torch.allclose(attn.reduced_tokens(x, h, w), pooled, atol=1e-6)
        k, v = attn.kv(pooled).split(8, dim=-1)
        q = attn.q(x)
        heads = [((q[..., s] @ k[..., s].transpose(1, 2)) * 4 ** -0.5).softmax(-1) @ v[..., s]
                 for s in (slice(0, 4), slice(4, 8))]
        reference = attn.proj(torch.cat(heads, dim=-1))
    assert torch.allclose(out, reference, atol=1e-6)


def test_attention_uses_the_fused_kernel() -> None:
    from torch.profiler import ProfilerActivity, profile

    net = build_network("segformer_b0_ade20k")
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        net(torch.randn(1, 3, 64, 64))
    names = {e.key for e in prof.key_averages()}
    assert "aten::_scaled_dot_product_attention_math" not in names
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in names


# ---- PVT v1 position embeddings ----------------------------------------------------------------------------
def test_pvt_v1_position_embeddings_follow_the_official_resize() -> None:
    net = _meta("pvt_tiny_fpn_ade20k").to_empty(device="cpu")  # uninitialised memory: set what is compared
    backbone = net.backbone
    generator = torch.Generator().manual_seed(0)
    for stage in range(1, 5):
        embedding = getattr(backbone, f"pos_embed{stage}")
        embedding.data.copy_(torch.randn(embedding.shape, generator=generator))
    # at the 224 grid the resize is the identity; stage 4 drops its first (class-token) slot
    assert torch.equal(backbone.position_embedding(4, 7, 7), backbone.pos_embed4[:, 1:])
    assert torch.allclose(backbone.position_embedding(2, 28, 28), backbone.pos_embed2)
    # 3136 stage-1 tokens in another shape: the raw 56x56 embedding, unresized (the official shortcut)
    assert torch.equal(backbone.position_embedding(1, 28, 112), backbone.pos_embed1)
    assert backbone.position_embedding(3, 5, 9).shape == (1, 45, 320)


def test_pvt_v1_rejects_sizes_the_official_code_cannot_run() -> None:
    net = _meta("pvt_tiny_fpn_ade20k")
    with pytest.raises(ValueError, match="448x448 input: its stage-2 map is 56x56 = 3136 tokens"):
        net(torch.zeros(1, 3, 448, 448, device="meta"))
    assert net(torch.zeros(1, 3, 112, 448, device="meta")).shape == (1, 150, 28, 112)


# ---- ISR ---------------------------------------------------------------------------------------------------
def test_conv_sra_scheme_rules() -> None:
    assert SEGFORMER_ISR.training == ISRSetting((8, 4, 2, 1), ())
    assert str(SEGFORMER_ISR.from_ratio(2)) == "[16,8,4,1]", "stage 4 cannot be reduced and stays 1"
    assert SEGFORMER_ISR.parse("[16, 8, 2, 1]") == ISRSetting((16, 8, 2, 1), ()) == SEGFORMER_ISR.parse("16,8,2,1")
    assert SEGFORMER_ISR.parse("2") == SEGFORMER_ISR.from_ratio(2)
    setting = SEGFORMER_ISR.make(encoder=[32, 16, 4, 1])
    assert setting.slug == "enc32-16-4-1" and ISRSetting.read(str(setting)) == setting
    with pytest.raises(ValueError, match=r"encoder stage 4 has no key/value reduction path .* got 2"):
        SEGFORMER_ISR.make(encoder=[16, 8, 4, 2])
    with pytest.raises(ValueError, match=r"encoder stage 1 .* must be a multiple of 8 \(8, 16, 24, ...\), got 12"):
        SEGFORMER_ISR.make(encoder=[12, 8, 2, 1])
    with pytest.raises(ValueError, match="has no decoder attention; give encoder ratios only"):
        SEGFORMER_ISR.make(encoder=[16, 8, 2, 1], decoder=[2, 4, 8])
    with pytest.raises(ValueError, match="ISR decoder must have 3 values"):
        ISRSetting.parse("16,8,2,1")  # EDAFormer's reading is unchanged
    assert "sr conv [8,4,2,1] then average pool [2,2,1,1]" in SEGFORMER_ISR.describe(ISRSetting((16, 8, 2, 1), ()))


@pytest.mark.parametrize("scheme, size, smallest", [
    (SEGFORMER_ISR, 28, 29), (PVT_V2_ISR, 28, 29), (PVT_V1_ISR, 31, 32)])
def test_training_reduction_needs_a_minimum_input(scheme, size: int, smallest: int) -> None:
    assert scheme.smallest_input(scheme.training) == smallest
    assert scheme.problem(scheme.training, smallest, smallest) is None
    assert f"(it needs at least {smallest}x{smallest})" in scheme.problem(scheme.training, size, 64)


def test_map_rounding_follows_the_patch_embeddings() -> None:
    assert SEGFORMER_ISR.feature_map_sizes(77, 101) == [(20, 26), (10, 13), (5, 7), (3, 4)]
    assert PVT_V1_ISR.feature_map_sizes(77, 101) == [(19, 25), (9, 12), (4, 6), (2, 3)]
    net = _meta("pvt_tiny_fpn_ade20k")
    assert net(torch.zeros(1, 3, 77, 101, device="meta")).shape == (1, 150, 19, 25)


def test_isr_too_large_for_the_input_names_the_size_it_needs() -> None:
    net = _meta("segformer_b0_ade20k")
    net.set_isr(encoder=[32, 16, 2, 1])
    with pytest.raises(ValueError, match=r"^ISR \[32,16,2,1\] does not fit a 96x128 input \(it needs at least "
                                         r"125x125\): encoder stage 1 has a 24x32 feature map, smaller than its "
                                         r"key/value pool ratio 32$"):
        net(torch.zeros(1, 3, 96, 128, device="meta"))
    assert net(torch.zeros(1, 3, 125, 125, device="meta")).shape == (1, 150, 32, 32)


def test_segformer_isr_switches_between_forwards_and_restores_exactly() -> None:
    net = _seeded("segformer_b0_ade20k")
    base = _forward(net, 128, 160)
    assert net.set_isr(ratio=2) == ISRSetting((16, 8, 4, 1), ())
    assert net.backbone.block1[1].attn.ratio == 16 and net.backbone.block4[0].attn.ratio == 1
    reduced = _forward(net, 128, 160)
    with pytest.raises(ValueError, match="no key/value reduction path"):
        net.set_isr(encoder=[16, 8, 4, 2])
    assert net.isr == ISRSetting((16, 8, 4, 1), ()), "a rejected setting changes nothing"
    net.set_isr(ratio=1)
    assert not torch.allclose(base, reduced) and torch.equal(base, _forward(net, 128, 160))


def test_linear_sra_follows_its_own_rule() -> None:
    """PVTv2-li: training is the adaptive 7x7 grid (no setting); a setting replaces it by an average pool
    of that ratio in every stage -- so [8,4,2,1] is not a no-op; ratio 2 is EDAFormer's shipped [16,8,4,2]."""
    assert PVT_V2_LI_ISR.training is None and PVT_V2_LI_ISR.from_ratio(1) is None
    assert PVT_V2_LI_ISR.from_ratio(2) == ISRSetting((16, 8, 4, 2), ())
    assert PVT_V2_LI_ISR.make(encoder=[8, 4, 2, 2]) == ISRSetting((8, 4, 2, 2), ()), "stage 4 can be pooled"
    assert "adaptive 7x7" in PVT_V2_LI_ISR.describe(None)
    net = _seeded("pvt_v2_b2_li_fpn_ade20k")
    assert net.isr is None
    adaptive = _forward(net, 128, 128)
    net.set_isr(encoder=[8, 4, 2, 1])
    assert net.isr == ISRSetting((8, 4, 2, 1), ()) and net.backbone.block4[0].attn.ratio == 1
    assert not torch.allclose(adaptive, _forward(net, 128, 128), atol=1e-4)
    assert net.set_isr(None) is None and torch.equal(adaptive, _forward(net, 128, 128))
    net.set_isr(ratio=2)
    with pytest.raises(ValueError, match=r"does not fit a 32x32 input \(it needs at least 61x61\)"):
        _forward(net, 32, 32)


def test_linear_sra_adaptive_grid_exports_at_any_size() -> None:
    """The adaptive 7x7 pool of an export (explicit bins) equals PyTorch's kernel at uneven sizes."""
    from dense_perception.networks.blocks import bin_means

    x = torch.randn(2, 5, 16, 23)
    explicit = bin_means(7, 16, x) @ x @ bin_means(7, 23, x).T
    assert torch.allclose(explicit, F.adaptive_avg_pool2d(x, 7), atol=1e-6)


def test_edaformer_scheme_is_unchanged() -> None:
    assert EDAFORMER_ISR.training == ISRSetting() and EDAFORMER_ISR.from_ratio(2) == ISRSetting.from_ratio(2)
    assert network_spec("edaformer_t_ade20k").isr is EDAFORMER_ISR


# ---- costs -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, size, training, setting, reduced", GFLOPS)
def test_gflops_match_the_design_table_within_1_percent(name: str, size: tuple[int, int], training: float,
                                                       setting: list[int], reduced: float) -> None:
    net = _meta(name)
    assert count_cost(net, *size).total_macs / 1e9 == pytest.approx(training, rel=0.01)
    net.set_isr(encoder=setting)
    assert count_cost(net, *size).total_macs / 1e9 == pytest.approx(reduced, rel=0.01)


def test_info_prints_segformer_b0_cityscapes_isr(capsys: pytest.CaptureFixture) -> None:
    assert main(["info", "segformer_b0_cityscapes", "--isr-encoder", "16,8,2,1"]) == 0
    out = capsys.readouterr().out
    assert "input 1x3x1024x2048" in out and "ISR [16,8,2,1]" in out
    total = re.search(r"^\s+total\s+([\d.]+) M\s+([\d.]+) G$", out, re.M)
    assert total and float(total[1]) == pytest.approx(3.721, abs=1e-3)
    assert float(total[2]) == pytest.approx(82.38, rel=0.01)
    assert main(["info", "segformer_b0_cityscapes", "--isr", "2"]) == 0
    assert "ISR [16,8,4,1]" in capsys.readouterr().out
    assert main(["info", "segformer_b0_cityscapes", "--isr-encoder", "16,8,4,2"]) == 2
    assert "encoder stage 4 has no key/value reduction path" in capsys.readouterr().err


@pytest.mark.parametrize("size", [(64, 64), (77, 101)])
def test_segformer_head_equals_the_concatenating_formulation(size: tuple[int, int]) -> None:
    """The head folds linear_fuse's conv into the per-level projections; the official formulation
    (project, resize, concatenate [c4, c3, c2, c1], conv, BN, ReLU, classify) gives the same logits."""
    net = _seeded("segformer_b1_ade20k")
    head = net.decode_head
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        features = net.forward_features(x)
        levels = []
        for i in (4, 3, 2, 1):
            c = features[i - 1]
            projected = getattr(head, f"linear_c{i}").proj(c.flatten(2).transpose(1, 2))
            projected = projected.transpose(1, 2).reshape(1, -1, *c.shape[2:])
            levels.append(F.interpolate(projected, size=features[0].shape[2:], mode="bilinear",
                                        align_corners=False))
        fused = F.relu(head.linear_fuse.bn(head.linear_fuse.conv(torch.cat(levels, dim=1))))
        official = head.linear_pred(fused)
        ours = net(x)
    assert ours.shape == official.shape
    assert torch.allclose(ours, official, rtol=0, atol=1e-5 * official.abs().max().item())
