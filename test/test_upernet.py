"""The shared UperNet head: explicit pyramid-pooling bins, mmseg key layout, output size."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dense_perception.networks.common import ConvModule
from dense_perception.networks.upernet import FCNHead, UPerHead, adaptive_avg_pool, adaptive_pool_matrix


@pytest.mark.parametrize(("height", "width", "bins"), [
    (16, 16, 1), (16, 16, 2), (16, 16, 3), (16, 16, 6),  # 512² input: 3 and 6 overlap
    (12, 16, 6), (7, 5, 3), (2, 2, 6), (1, 3, 2),  # non-square, fewer pixels than bins
])
def test_adaptive_pool_matches_pytorch(height: int, width: int, bins: int) -> None:
    x = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(height * width + bins))
    expected = F.adaptive_avg_pool2d(x, bins)
    torch.testing.assert_close(adaptive_avg_pool(x, bins), expected, rtol=0, atol=1e-6)


def test_pool_bins_overlap_like_pytorch() -> None:
    """16 → 6: PyTorch's bins (floor/ceil edges) overlap; equal-width bins would be a porting mistake."""
    weights = adaptive_pool_matrix(16, 6)
    counts = (weights > 0).sum(1).tolist()
    assert counts == [3, 4, 3, 3, 4, 3]
    assert (weights > 0).sum(0).max() == 2  # some pixels sit in two bins
    torch.testing.assert_close(weights.sum(1), torch.ones(6))


def test_head_keys_and_output_size() -> None:
    head = UPerHead([8, 16, 24, 32], num_classes=5, channels=16)
    keys = set(head.state_dict())
    assert {"psp_modules.3.1.conv.weight", "bottleneck.bn.running_var", "lateral_convs.2.conv.weight",
            "fpn_convs.2.bn.weight", "fpn_bottleneck.conv.weight", "conv_seg.bias"} <= keys
    assert not any(k.startswith(("lateral_convs.3", "fpn_convs.3")) for k in keys)  # level 3 is the PPM
    assert head.bottleneck.conv.weight.shape == (16, 32 + 4 * 16, 3, 3)
    assert head.fpn_bottleneck.conv.weight.shape == (16, 4 * 16, 3, 3)
    features = [torch.randn(1, c, 20 // s, 28 // s) for c, s in zip((8, 16, 24, 32), (1, 2, 4, 8))]
    out = head.eval()(features)
    assert out.shape == (1, 5, 20, 28)


def test_conv_module_bias_follows_norm() -> None:
    """mmcv ``bias='auto'``: a bias only where no BatchNorm follows."""
    assert ConvModule(4, 8, 3).conv.bias is None and ConvModule(4, 8, 3).bn.eps == 1e-5
    plain = ConvModule(4, 8, 1, norm_act=False)
    assert plain.conv.bias is not None and plain.bn is None
    assert set(FCNHead(8, 3).state_dict()) >= {"convs.0.conv.weight", "convs.0.bn.weight", "conv_seg.weight"}
