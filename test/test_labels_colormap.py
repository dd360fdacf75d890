"""Class names/palettes (mmseg's, for EDAFormer's datasets) and the colourisation helpers."""
from __future__ import annotations

import warnings

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
    valid_depth_mask,
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


# ---------------------------------------------------------------- boundaries, defaults and messages


def test_label_set_normalises_names_to_a_tuple_of_strings() -> None:
    labels = LabelSet("x", [1, "b"], [[0, 0, 0], [1, 2, 3]])
    assert labels.names == ("1", "b") and labels.num_classes == 2
    single = LabelSet("one", ("only",), [[7, 8, 9]])  # one class is a valid set
    assert single.palette.tolist() == [[7, 8, 9]]


def test_label_sets_differ_when_names_or_palette_differ() -> None:
    base = LabelSet("x", ("a", "b"), [[0, 0, 0], [1, 2, 3]])
    assert base == LabelSet("x", ("a", "b"), np.array([[0, 0, 0], [1, 2, 3]]))
    assert base != LabelSet("x", ("a", "c"), [[0, 0, 0], [1, 2, 3]])
    assert base != LabelSet("x", ("a", "b"), [[0, 0, 0], [1, 2, 4]])
    assert base != LabelSet("y", ("a", "b"), [[0, 0, 0], [1, 2, 3]])
    assert hash(base) == hash(LabelSet("x", ["a", "b"], [[0, 0, 0], [1, 2, 3]]))
    assert hash(base) != hash(label_set("cityscapes")), "the hash depends on the contents"
    assert len({base, label_set("ade20k"), label_set("ade20k")}) == 2


@pytest.mark.parametrize("palette", [
    [[0.0, 128.0, 255.0]],  # integral floats (e.g. from JSON)
    np.array([[0, 128, 255]], np.int64),
])
def test_palettes_of_integral_numbers_in_0_255_are_accepted(palette) -> None:
    assert LabelSet("x", ("a",), palette).palette.tolist() == [[0, 128, 255]]


@pytest.mark.parametrize("palette, described", [
    ([[0, 0, 256]], "shape (1, 3)"), ([[-1, 0, 0]], "shape (1, 3)"), ([[np.nan, 0, 0]], "shape (1, 3)"),
    ([[0.5, 0, 0]], "shape (1, 3)"), ([[0, 0, 0, 0]], "shape (1, 4)"), (np.zeros((0, 3)), "shape (0, 3)"),
    ([["a", "b", "c"]], "shape (1, 3)"), ([[0, 0, 0], [1, 2]], "a ragged nested sequence"),
])
def test_invalid_palettes_are_refused(palette, described: str) -> None:
    with pytest.raises(ValueError) as error:
        LabelSet("x", ("a",), palette)
    assert str(error.value) == f"palette must be [K, 3] integers in 0..255, got {described}"


def test_generic_palette_steps_hue_by_the_golden_ratio_and_cycles_brightness() -> None:
    palette = label_set_for_classes(30).palette
    hsv = cv2.cvtColor(palette[np.newaxis], cv2.COLOR_RGB2HSV)[0].astype(int)
    # value (the largest channel) cycles 255, 200, 150 every three classes
    assert hsv[:, 2].tolist() == [[255, 200, 150][(i // 3) % 3] for i in range(30)]
    # hue (OpenCV: degrees / 2) of class i: the fractional part of i * 0.618..., times 180
    expected_hue = np.round(np.modf(np.arange(30) * (np.sqrt(5) - 1) / 2)[0] * 180) % 180
    hue_error = np.abs(hsv[:, 0] - expected_hue)
    assert np.minimum(hue_error, 180 - hue_error).max() <= 2  # rounding through 8-bit RGB
    assert label_set_for_classes(1).palette.shape == (1, 3)
    with pytest.raises(ValueError) as error:
        label_set_for_classes(0)
    assert str(error.value) == "num_classes must be >= 1, got 0"


def test_custom_and_meta_label_sets_keep_their_dataset() -> None:
    assert label_set_for_classes(3).dataset == "custom"
    fallback = label_set("cityscapes")
    palette = [[i, i, i] for i in range(19)]
    merged = label_set_from_checkpoint_meta({"CLASSES": ["too", "few"], "PALETTE": palette}, fallback)
    assert merged.dataset == "cityscapes" and merged.names == fallback.names
    assert merged.palette.tolist() == palette


def test_valid_depth_defaults_to_metric() -> None:
    depth = np.array([np.nan, -1.0, 0.0, 2.0, np.inf])
    assert valid_depth_mask(depth).tolist() == [False, False, False, True, False]
    assert valid_depth_mask(depth, inverse=True).tolist() == [False, True, True, True, False]


def test_robust_range_of_inverse_depth_keeps_zero_and_negative_values() -> None:
    inverse = np.linspace(-1.0, 1.0, 101)
    low, high = robust_range(inverse, inverse=True)
    assert (low, high) == pytest.approx((-0.96, 0.96))
    assert robust_range(inverse)[0] > 0, "metric depth: only the positive values count"


def test_one_fixed_bound_keeps_the_other_automatic() -> None:
    depth = RAMP + 1.0
    auto_low, auto_high = robust_range(depth)
    both = colorize_depth(depth, vmin=5.0, vmax=auto_high)
    assert np.array_equal(colorize_depth(depth, vmin=5.0), both)
    assert np.array_equal(colorize_depth(depth, vmax=200.0), colorize_depth(depth, vmin=auto_low, vmax=200.0))
    assert not np.array_equal(both, colorize_depth(depth))


def test_automatic_range_of_inverse_depth_uses_inverse_validity() -> None:
    inverse = np.tile(np.linspace(-1.0, 1.0, 101), (2, 1))
    low, high = robust_range(inverse, inverse=True)
    expected = colorize_depth(inverse, vmin=low, vmax=high, inverse=True)
    assert np.array_equal(colorize_depth(inverse, inverse=True), expected)


def test_an_empty_range_gives_the_low_colour_to_every_valid_pixel_quietly() -> None:
    depth = np.array([[5.0, 7.0], [3.0, np.nan]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flat = colorize_depth(depth, vmin=5.0, vmax=5.0)
    low = _lut_rgb("turbo")[0]
    assert all(np.array_equal(flat[pixel], low) for pixel in ((0, 0), (0, 1), (1, 0)))
    assert not flat[1, 1].any()


def test_colour_errors_name_the_choices() -> None:
    with pytest.raises(ValueError) as error:
        colorize_depth(RAMP, colormap="jet")
    assert str(error.value) == "unknown colormap 'jet'; choose from turbo, inferno, viridis, magma"
    with pytest.raises(ValueError) as error:
        colorize_depth(np.zeros((2, 2, 2)))
    assert str(error.value) == "depth must be HxW, got shape (2, 2, 2)"


def test_stable_range_bounds_defaults_and_reset() -> None:
    jump = StableRange(alpha=1.0)  # alpha 1: follows each frame
    jump.update(RAMP + 1.0)
    assert jump.update(RAMP * 0.1 + 1.0) == robust_range(RAMP * 0.1 + 1.0)
    for alpha in (1.5, -0.1):
        with pytest.raises(ValueError) as error:
            StableRange(alpha=alpha)
        assert str(error.value) == f"alpha must be in (0, 1], got {alpha}"
    metric = StableRange()  # metric depth by default: zero and negative values are not depth
    with_invalid = np.concatenate([RAMP + 1.0, np.zeros_like(RAMP), -RAMP], axis=1)
    assert metric.update(with_invalid) == robust_range(RAMP + 1.0)
    inverse = StableRange(inverse=True)
    assert inverse.update(with_invalid) == robust_range(with_invalid, inverse=True)
    assert StableRange(vmax=7.0).update(RAMP + 1.0) == (robust_range(RAMP + 1.0)[0], 7.0)
    slow = StableRange(alpha=0.5)
    slow.update(RAMP + 1.0)
    slow.reset()
    assert slow.update(RAMP * 0.1 + 1.0) == robust_range(RAMP * 0.1 + 1.0), "after reset: set outright"


def test_colorize_labels_checks_and_uses_the_whole_palette() -> None:
    palette = np.array([[10 * i, 0, 0] for i in range(5)], np.uint8)  # 5 classes, not 3
    labels = np.array([[4, 3, 5]], np.uint8)
    assert colorize_labels(labels, palette).tolist() == [[[40, 0, 0], [30, 0, 0], [0, 0, 0]]]
    with pytest.raises(TypeError) as error:
        colorize_labels(labels.astype(np.float32), palette)
    assert str(error.value) == "labels must be an integer array (uint8/uint16), got float32"
    with pytest.raises(ValueError) as error:
        colorize_labels(labels[0], palette)
    assert str(error.value) == "labels must be HxW, got shape (3,)"
    with pytest.raises(ValueError) as error:
        colorize_labels(labels, np.zeros((5, 4), np.uint8))
    assert str(error.value) == "palette must be [K, 3], got shape (5, 4)"


def test_overlay_refuses_what_is_not_an_rgb8_image() -> None:
    image = np.full((2, 3, 3), 100, dtype=np.uint8)
    for name, bad in (("colored", np.zeros((2, 3, 3), np.float32)), ("colored", np.zeros((2, 3, 4), np.uint8))):
        with pytest.raises(ValueError) as error:
            overlay(image, bad)
        assert str(error.value) == f"{name} must be HxWx3 uint8, got shape {bad.shape} dtype {bad.dtype}"
    with pytest.raises(ValueError) as error:
        overlay(image[..., 0], image)
    assert str(error.value).startswith("image_rgb must be HxWx3 uint8")
    with pytest.raises(ValueError) as error:
        overlay(image, image, alpha=-0.5)
    assert str(error.value) == "alpha must be in [0, 1], got -0.5"
    np.testing.assert_array_equal(overlay(image, np.full_like(image, 200), 0.25), np.full_like(image, 125))
