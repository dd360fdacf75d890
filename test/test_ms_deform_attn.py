"""Multi-scale deformable attention on grid_sample, against an explicit 4-corner bilinear gather."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dense_perception.networks.ms_deform_attn import (
    MultiScaleDeformableAttention, deformable_sampling, level_reference_points,
)

SHAPES = [(6, 10), (3, 5), (2, 3)]  # non-square levels


def gather_bilinear(value: np.ndarray, shapes: list[tuple[int, int]], locations: np.ndarray,
                    weights: np.ndarray) -> np.ndarray:
    """The official kernel's arithmetic, written out: each sample reads the four pixels around
    ``(x·W − 0.5, y·H − 0.5)``, corners outside the map count as zero; samples are summed with
    their weights. value [B,S,M,D], locations [B,Q,M,L,P,2], weights [B,Q,M,L,P] → [B,Q,M·D]."""
    batch, _, heads, depth = value.shape
    queries = locations.shape[1]
    out = np.zeros((batch, queries, heads, depth))
    start = 0
    for level, (height, width) in enumerate(shapes):
        level_value = value[:, start:start + height * width].reshape(batch, height, width, heads, depth)
        start += height * width
        px = locations[:, :, :, level, :, 0] * width - 0.5  # [B,Q,M,P]
        py = locations[:, :, :, level, :, 1] * height - 0.5
        x0, y0 = np.floor(px).astype(int), np.floor(py).astype(int)
        fx, fy = px - x0, py - y0
        for dy, dx, corner in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy),
                               (1, 1, fx * fy)):
            xs, ys = x0 + dx, y0 + dy
            inside = (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
            b, q, m, p = np.indices(xs.shape)
            read = level_value[b, ys.clip(0, height - 1), xs.clip(0, width - 1), m]  # [B,Q,M,P,D]
            factor = (corner * inside * weights[:, :, :, level])[..., None]
            out += (read * factor).sum(axis=3)
    return out.reshape(batch, queries, heads * depth)


def test_grid_sample_form_equals_explicit_gather() -> None:
    g = torch.Generator().manual_seed(3)
    batch, queries, heads, depth, points = 2, 17, 3, 4, 4
    tokens = sum(h * w for h, w in SHAPES)
    value = torch.randn(batch, tokens, heads, depth, generator=g, dtype=torch.float64)
    # 30 % of the samples outside [0, 1] (zero padding), the rest anywhere inside
    locations = torch.rand(batch, queries, heads, len(SHAPES), points, 2, generator=g, dtype=torch.float64) * 1.6 - 0.3
    weights = torch.rand(batch, queries, heads, len(SHAPES), points, generator=g, dtype=torch.float64)
    ours = deformable_sampling(value, SHAPES, locations, weights).numpy()
    expected = gather_bilinear(value.numpy(), SHAPES, locations.numpy(), weights.numpy())
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)


def test_reference_points_are_pixel_centres() -> None:
    points = level_reference_points([(2, 3), (1, 2)])
    expected = [[0.5 / 3, 0.25], [1.5 / 3, 0.25], [2.5 / 3, 0.25], [0.5 / 3, 0.75], [1.5 / 3, 0.75],
                [2.5 / 3, 0.75], [0.25, 0.5], [0.75, 0.5]]
    torch.testing.assert_close(points, torch.tensor([expected]))


def _single_point_attention(dim: int, offset_xy: tuple[float, float]) -> MultiScaleDeformableAttention:
    """One head, one level, one point at a fixed pixel offset; values and output passed through."""
    attn = MultiScaleDeformableAttention(dim, heads=1, levels=1, points=1)
    with torch.no_grad():
        for layer in (attn.sampling_offsets, attn.attention_weights):
            layer.weight.zero_()
            layer.bias.zero_()
        attn.sampling_offsets.bias.copy_(torch.tensor(offset_xy))
        for layer in (attn.value_proj, attn.output_proj):
            layer.weight.copy_(torch.eye(dim))
            layer.bias.zero_()
    return attn


@pytest.mark.parametrize(("offset", "shift"), [((1.0, 0.0), (0, 1)), ((0.0, 1.0), (1, 0)), ((-1.0, 2.0), (2, -1))])
def test_offsets_are_pixels_x_first(offset: tuple[float, float], shift: tuple[int, int]) -> None:
    """An offset of (dx, dy) pixels reads the pixel dx columns right and dy rows down, on a
    non-square map -- the normaliser is (W, H), width first; outside the map reads zero."""
    height, width, dim = 3, 5, 2
    values = torch.randn(1, height * width, dim, generator=torch.Generator().manual_seed(0))
    attn = _single_point_attention(dim, offset)
    with torch.no_grad():
        out = attn(values, level_reference_points([(height, width)]), values, [(height, width)])
    grid = values.reshape(height, width, dim)
    expected = torch.zeros_like(grid)
    dy, dx = shift
    for i in range(height):
        for j in range(width):
            if 0 <= i + dy < height and 0 <= j + dx < width:
                expected[i, j] = grid[i + dy, j + dx]
    torch.testing.assert_close(out.reshape(height, width, dim), expected, rtol=0, atol=1e-6)


def test_attention_weights_softmax_over_levels_and_points_together() -> None:
    """Constant values of 1 sampled at pixel centres: the weighted sum is 1 only when the softmax
    normalises the weights of all levels and points of a head jointly (per level it would be 2)."""
    dim, shapes = 4, [(3, 4), (3, 4)]
    attn = MultiScaleDeformableAttention(dim, heads=2, levels=2, points=2)
    with torch.no_grad():
        attn.sampling_offsets.weight.zero_()
        attn.sampling_offsets.bias.zero_()
        attn.attention_weights.weight.zero_()
        attn.attention_weights.bias.copy_(torch.linspace(-1, 1, 8))
        attn.value_proj.weight.zero_()
        attn.value_proj.bias.fill_(1.0)
    sampled = {}
    attn.output_proj.register_forward_pre_hook(lambda _m, args: sampled.setdefault("x", args[0]))
    query = torch.randn(1, 12, dim)
    with torch.no_grad():
        attn(query, level_reference_points(shapes[:1]), torch.randn(1, 24, dim), shapes)
    torch.testing.assert_close(sampled["x"], torch.ones(1, 12, dim))


def test_rejects_a_wrong_level_count() -> None:
    attn = MultiScaleDeformableAttention(8, heads=2, levels=3, points=4)
    with pytest.raises(ValueError, match="expected 3 levels"):
        attn(torch.zeros(1, 4, 8), torch.zeros(1, 4, 2), torch.zeros(1, 4, 8), [(2, 2)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    g = torch.Generator().manual_seed(5)
    attn = MultiScaleDeformableAttention(32, heads=4, levels=3, points=4).eval()
    tokens = sum(h * w for h, w in SHAPES)
    query, values = torch.randn(2, tokens, 32, generator=g), torch.randn(2, tokens, 32, generator=g)
    reference = level_reference_points(SHAPES)
    with torch.no_grad():
        on_cpu = attn(query, reference, values, SHAPES)
        on_gpu = attn.cuda()(query.cuda(), reference.cuda(), values.cuda(), SHAPES).cpu()
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-4, atol=1e-5)
