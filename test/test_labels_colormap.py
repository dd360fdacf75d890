"""Class names/palettes (mmseg's, for EDAFormer's datasets) and the colourisation helpers."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from dense_perception.pipeline.colormap import (
    COLORMAPS,
    StableRange,
    colorize_depth,
    colorize_labels,
    overlay,
    robust_range,
)
from dense_perception.pipeline.labels import (
    DATASETS,
    LabelSet,
    label_set,
    label_set_for_classes,
    label_set_from_checkpoint_meta,
)

RAMP = np.tile(np.arange(256, dtype=np.float32), (2, 1))  # 2x256, values 0..255


# ---------------------------------------------------------------- labels


@pytest.mark.parametrize("dataset, count", [("ade20k", 150), ("cityscapes", 19), ("cocostuff", 171)])
def test_label_set_counts_and_types(dataset: str, count: int) -> None:
    labels = label_set(dataset)
    assert labels.dataset == dataset and labels.num_classes == count == len(labels.names)
    assert labels.palette.shape == (count, 3) and labels.palette.dtype == np.uint8
    assert not labels.palette.flags.writeable
    assert len(set(labels.names)) == count


@pytest.mark.parametrize(
    "dataset, index, name, rgb",
    [
        ("ade20k", 0, "wall", (120, 120, 120)),
        ("ade20k", 7, "bed ", (204, 5, 255)),  # mmseg's trailing space, kept
        ("ade20k", 149, "flag", (92, 0, 255)),
        ("cityscapes", 0, "road", (128, 64, 128)),
        ("cityscapes", 13, "car", (0, 0, 142)),
        ("cityscapes", 18, "bicycle", (119, 11, 32)),
        ("cocostuff", 0, "person", (0, 192, 64)),
        ("cocostuff", 170, "wood", (64, 64, 0)),
    ],
)
def test_label_set_known_entries(dataset: str, index: int, name: str, rgb: tuple[int, int, int]) -> None:
    labels = label_set(dataset)
    assert labels.names[index] == name
    assert tuple(labels.palette[index]) == rgb


def test_palette_uniqueness_matches_mmseg() -> None:
    assert len(np.unique(label_set("cityscapes").palette, axis=0)) == 19
    ade = label_set("ade20k")
    assert len(np.unique(ade.palette, axis=0)) == 149  # mmseg repeats grey for road and skyscraper
    assert (ade.names[6], ade.names[48]) == ("road", "skyscraper")
    assert np.array_equal(ade.palette[6], ade.palette[48])


def test_label_set_name_handling() -> None:
    assert label_set(" ADE20K ") == label_set("ade20k")
    with pytest.raises(ValueError, match="ade20k, cityscapes, cocostuff"):
        label_set("voc")
    assert DATASETS == ("ade20k", "cityscapes", "cocostuff")


def test_label_set_validates() -> None:
    with pytest.raises(ValueError, match="names"):
        LabelSet("x", ("a",), np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match="palette"):
        LabelSet("x", ("a",), np.array([[0, 0, 300]]))


def test_label_set_for_classes() -> None:
    labels = label_set_for_classes(12)
    assert labels.names[:2] == ("class_0", "class_1") and labels.num_classes == 12
    assert labels.palette.shape == (12, 3) and labels.palette.dtype == np.uint8
    assert len(np.unique(labels.palette, axis=0)) == 12
    neighbours = np.abs(np.diff(labels.palette.astype(int), axis=0)).sum(axis=1)
    assert neighbours.min() > 60  # consecutive classes clearly differ
    assert labels == label_set_for_classes(12)  # deterministic
    with pytest.raises(ValueError):
        label_set_for_classes(0)


def test_label_set_from_checkpoint_meta() -> None:
    fallback = label_set("cityscapes")
    names = [f"c{i}" for i in range(19)]
    palette = [[i, 2 * i, 3 * i] for i in range(19)]

    from_list = label_set_from_checkpoint_meta({"CLASSES": names, "PALETTE": palette}, fallback)
    assert from_list.names == tuple(names) and np.array_equal(from_list.palette, palette)
    as_array = {"CLASSES": tuple(names), "PALETTE": np.array(palette)}
    assert label_set_from_checkpoint_meta(as_array, fallback) == from_list
    mmseg1 = {"dataset_meta": {"classes": names, "palette": palette}}
    assert label_set_from_checkpoint_meta(mmseg1, fallback) == from_list

    names_only = label_set_from_checkpoint_meta({"CLASSES": names}, fallback)
    assert names_only.names == tuple(names) and np.array_equal(names_only.palette, fallback.palette)
    for meta in ({}, None, {"CLASSES": names[:5], "PALETTE": palette[:5]}, {"PALETTE": "nonsense"}):
        assert label_set_from_checkpoint_meta(meta, fallback) is fallback


# ---------------------------------------------------------------- depth


def _lut_rgb(colormap: str) -> np.ndarray:
    """OpenCV's 256-entry colour map, converted to RGB."""
    bgr = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[None], COLORMAPS[colormap])[0]
    return bgr[:, ::-1]


@pytest.mark.parametrize("colormap", sorted(COLORMAPS))
def test_colorize_depth_ramp_is_the_colormap_in_rgb(colormap: str) -> None:
    rgb = colorize_depth(RAMP + 1.0, vmin=1.0, vmax=256.0, colormap=colormap)
    assert rgb.shape == (2, 256, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[0], _lut_rgb(colormap))


def test_colorize_depth_turbo_ends_and_order() -> None:
    rgb = colorize_depth(RAMP + 1.0).astype(int)[0]  # automatic (percentile) range
    assert rgb[0, 2] > rgb[0, 0]  # near/low end: dark blue, so B > R (a BGR mix-up fails here)
    assert rgb[-1, 0] > rgb[-1, 2]  # far/high end: dark red
    assert len(np.unique(rgb[10:-10], axis=0)) > 200  # distinct colours along the ramp


def test_colorize_depth_invalid_pixels_black() -> None:
    depth = np.array([[np.nan, np.inf, -np.inf], [0.0, -1.0, 2.0]])
    rgb = colorize_depth(depth, vmin=1.0, vmax=3.0)
    assert not rgb.reshape(-1, 3)[:5].any() and rgb[1, 2].any()
    assert not colorize_depth(np.full((2, 2), np.nan)).any()
    # relative inverse depth may be <= 0 and stays valid
    assert colorize_depth(depth, vmin=-1.0, vmax=2.0, inverse=True)[1, 1].any()


def test_colorize_depth_inverse_flips() -> None:
    metric = colorize_depth(RAMP + 1.0, vmin=1.0, vmax=256.0)
    inverse = colorize_depth(RAMP + 1.0, vmin=1.0, vmax=256.0, inverse=True)
    assert np.array_equal(inverse, metric[:, ::-1])
    # the same scene as depth and as inverse depth: near gets the same colour
    depth = np.array([[1.0, 2.0, 4.0, 8.0]])
    near_metric = colorize_depth(depth, vmin=1.0, vmax=8.0)[0, 0]
    near_inverse = colorize_depth(1.0 / depth, vmin=1 / 8, vmax=1.0, inverse=True)[0, 0]
    assert np.array_equal(near_metric, near_inverse)


def test_colorize_depth_arguments() -> None:
    assert colorize_depth(RAMP[..., None] + 1.0).shape == (2, 256, 3)
    flat = colorize_depth(np.full((2, 2), 5.0), vmin=5.0, vmax=5.0)  # empty range: one colour, no error
    assert len(np.unique(flat.reshape(-1, 3), axis=0)) == 1 and flat.any()
    with pytest.raises(ValueError, match="turbo"):
        colorize_depth(RAMP, colormap="jet")
    with pytest.raises(ValueError):
        colorize_depth(np.zeros(5))


def test_robust_range_ignores_outliers() -> None:
    depth = np.concatenate([np.linspace(1.0, 2.0, 98), [1000.0, np.nan, 0.0]])
    low, high = robust_range(depth)
    assert 1.0 <= low < high <= 2.0
    assert robust_range(np.zeros(3)) is None


def test_stable_range_converges() -> None:
    stable = StableRange(alpha=0.5)
    assert stable.update(np.full((2, 2), np.nan)) == (0.0, 1.0)
    first = stable.update(RAMP + 1.0)
    assert first == robust_range(RAMP + 1.0)
    target = robust_range(RAMP * 0.1 + 1.0)
    ranges = [stable.update(RAMP * 0.1 + 1.0) for _ in range(12)]
    assert abs(ranges[0][1] - (first[1] + target[1]) / 2) < 1e-9  # one EMA step
    assert np.allclose(ranges[-1], target, atol=0.1)
    assert stable.update(np.full((2, 2), np.nan)) == ranges[-1]  # empty frame: no change
    fixed = StableRange(vmin=0.0)
    assert fixed.update(RAMP + 1.0)[0] == 0.0
    with pytest.raises(ValueError):
        StableRange(alpha=0.0)


# ---------------------------------------------------------------- labels and overlay


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_colorize_labels(dtype: type) -> None:
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)
    labels = np.array([[0, 1, 2], [3, 255, 1]], dtype=dtype)
    rgb = colorize_labels(labels, palette)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[0], palette)
    assert not rgb[1, :2].any()  # out of range and 255 (ignore): black
    assert np.array_equal(rgb[1, 2], palette[1])
    with pytest.raises(TypeError):
        colorize_labels(labels.astype(np.float32), palette)


def test_overlay() -> None:
    image = np.full((2, 3, 3), 100, dtype=np.uint8)
    colored = np.full((2, 3, 3), 200, dtype=np.uint8)
    assert np.array_equal(overlay(image, colored, 0.0), image)
    assert np.array_equal(overlay(image, colored, 1.0), colored)
    assert np.all(overlay(image, colored) == 150)
    with pytest.raises(ValueError, match="shape"):
        overlay(image, colored[:1])
    with pytest.raises(ValueError):
        overlay(image, colored, alpha=1.5)
