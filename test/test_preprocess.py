"""Pre-processing gives the official network inputs (bit for bit where OpenCV is used the same way)."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dense_perception.networks.hrvit import hrvit_size_problem
from dense_perception.pipeline.preprocess import (
    DPT_TARGETS,
    ImageError,
    as_rgb_uint8,
    check_input_size,
    dpt_network_size,
    edaformer_network_size,
    hrvit_network_size,
    kitti_crop,
    normalise_imagenet,
    normalised_batch,
    preprocess_dpt,
    preprocess_edaformer,
    preprocess_for,
    preprocess_hrvit,
    preprocess_vit_comer,
    rescale_size,
    vit_comer_network_size,
)


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# ---- DPT: shared/design/dpt.md section 8 -------------------------------------------------------
@pytest.mark.parametrize("hw, target, expected", [
    ((480, 640), DPT_TARGETS["midas"], (384, 512)),
    ((1080, 1920), DPT_TARGETS["midas"], (384, 672)),
    ((375, 1242), DPT_TARGETS["midas"], (384, 1280)),
    ((480, 640), DPT_TARGETS["nyu"], (480, 640)),
    ((352, 1216), DPT_TARGETS["kitti"], (352, 1216)),
    ((375, 1242), DPT_TARGETS["kitti"], (352, 1216)),
    ((1, 1), DPT_TARGETS["midas"], (384, 384)),
    ((384, 384), DPT_TARGETS["midas"], (384, 384)),
])
def test_dpt_sizes_follow_the_official_examples(hw, target, expected) -> None:
    assert dpt_network_size(*hw, target) == expected


def test_dpt_rounding_is_half_to_even_and_never_zero() -> None:
    # 400x400 image, target 384: scale 0.96 -> 384/32 = 12 exactly; 1000x1000 -> 12
    assert dpt_network_size(400, 400, (384, 384)) == (384, 384)
    # a 1000x16 strip: scale_h 0.384 (closer to 1 than 24) -> width 16*0.384/32 rounds to 0 -> clamped
    assert dpt_network_size(1000, 16, (384, 384)) == (384, 32)
    # 2.5 rounds to 2 (half to even): side*scale/32 == 2.5 -> 64
    assert dpt_network_size(80, 384, (80, 384)) == (64, 384)


def _official_dpt_input(image_bgr: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """run_monodepth.py + dpt/transforms.py as documented: BGR->RGB, /255 float64, cubic, (x-.5)/.5."""
    img = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB) / 255.0
    h, w = img.shape[:2]
    sh, sw = target[0] / h, target[1] / w
    scale = sw if abs(1 - sw) < abs(1 - sh) else sh
    new_h = int(np.round(scale * h / 32) * 32)
    new_w = int(np.round(scale * w / 32) * 32)
    img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_CUBIC)
    img = (img - 0.5) / 0.5
    return np.ascontiguousarray(np.transpose(img, (2, 0, 1))).astype(np.float32)[None]


@pytest.mark.parametrize("hw, dataset", [((480, 640), "midas"), ((375, 1242), "kitti"), ((300, 500), "nyu")])
def test_dpt_input_is_the_official_input_bit_for_bit(hw, dataset) -> None:
    rgb = _image(*hw)
    ours = preprocess_dpt(rgb, DPT_TARGETS[dataset])
    official = _official_dpt_input(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), DPT_TARGETS[dataset])
    assert ours.tensor.dtype == torch.float32 and ours.image_size == hw
    assert np.array_equal(ours.tensor.numpy(), official)


def test_dpt_forced_size_and_kitti_crop() -> None:
    out = preprocess_dpt(_image(480, 640), input_size=(256, 320))
    assert out.network_size == (256, 320) and out.tensor.shape == (1, 3, 256, 320)
    with pytest.raises(ValueError, match="multiples of 32"):
        preprocess_dpt(_image(48, 64), input_size=(250, 320))
    frame = _image(375, 1242)
    crop = kitti_crop(frame)
    assert crop.shape == (352, 1216, 3) and np.array_equal(crop, frame[23:, 13:1229])
    with pytest.raises(ImageError, match="352x1216"):
        kitti_crop(_image(300, 1242))


# ---- EDAFormer: shared/design/edaformer.md section 6 (mmcv 1.2.7 transforms) -------------------
def _official_edaformer_input(image_bgr: np.ndarray, scale: tuple[int, int], align: bool) -> np.ndarray:
    """mmseg test pipeline as documented: imrescale (keep ratio, int(x+0.5), cv2 bilinear), AlignedResize
    (sides up to multiples of 32, cv2 bilinear), Normalize (mean/std kept as float32 arrays) ->
    imnormalize (float32, BGR->RGB, cv2.subtract float64(mean), cv2.multiply by 1/float64(std)),
    DefaultFormatBundle (HWC -> CHW)."""
    h, w = image_bgr.shape[:2]
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    new_w, new_h = int(w * factor + 0.5), int(h * factor + 0.5)
    img = cv2.resize(image_bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    if align:
        img = cv2.resize(img, (int(np.ceil(new_w / 32)) * 32, int(np.ceil(new_h / 32)) * 32),
                         interpolation=cv2.INTER_LINEAR)
    img = img.copy().astype(np.float32)
    mean = np.float64(np.array([123.675, 116.28, 103.53], dtype=np.float32).reshape(1, -1))
    stdinv = 1 / np.float64(np.array([58.395, 57.12, 57.375], dtype=np.float32).reshape(1, -1))
    cv2.cvtColor(img, cv2.COLOR_BGR2RGB, img)
    cv2.subtract(img, mean, img)
    cv2.multiply(img, stdinv, img)
    return np.ascontiguousarray(img.transpose(2, 0, 1))[None]


@pytest.mark.parametrize("hw, dataset, expected", [
    ((480, 640), "ade20k", (512, 704)),
    ((512, 683), "ade20k", (512, 704)),
    ((375, 500), "cocostuff", (512, 704)),
    ((1024, 2048), "cityscapes", (1024, 2048)),
    ((720, 1280), "cityscapes", (1024, 1820)),
    ((100, 3000), "ade20k", (96, 2048)),
])
def test_edaformer_input_is_the_official_input_bit_for_bit(hw, dataset, expected) -> None:
    rgb = _image(*hw, seed=1)
    ours = preprocess_edaformer(rgb, dataset)
    scale = (2048, 1024) if dataset == "cityscapes" else (2048, 512)
    official = _official_edaformer_input(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), scale, dataset != "cityscapes")
    assert ours.network_size == expected == edaformer_network_size(*hw, dataset)
    assert np.array_equal(ours.tensor.numpy(), official)


def test_table_normalisation_is_the_mmcv_arithmetic_for_every_value() -> None:
    """The per-channel table gives what mmcv's float arithmetic gives, for each of the 256 values in each
    channel (shuffled differently per channel, in a 7x256 image)."""
    rng = np.random.default_rng(3)
    image = np.stack([rng.permutation(np.tile(np.arange(256, dtype=np.uint8), 7)) for _ in range(3)], axis=1)
    image = image.reshape(7, 256, 3)
    expected = np.ascontiguousarray(normalise_imagenet(image).transpose(2, 0, 1))[None]
    assert np.array_equal(normalised_batch(image).numpy(), expected)


def test_edaformer_forced_size() -> None:
    out = preprocess_edaformer(_image(480, 640), "ade20k", input_size=(480, 640))
    assert out.network_size == (480, 640) and out.image_size == (480, 640)
    expected = (_image(480, 640).astype(np.float32) - np.float32([123.675, 116.28, 103.53])) / np.float32(
        [58.395, 57.12, 57.375])
    assert np.abs(out.tensor[0].permute(1, 2, 0).numpy() - expected).max() < 1e-5
    with pytest.raises(ValueError, match="positive"):
        preprocess_edaformer(_image(8, 8), "ade20k", input_size=(0, 64))


# ---- input validation ---------------------------------------------------------------------------
def test_accepted_image_kinds() -> None:
    grey = np.full((4, 5), 7, np.uint8)
    assert as_rgb_uint8(grey).shape == (4, 5, 3) and (as_rgb_uint8(grey) == 7).all()
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 3] = 255
    assert as_rgb_uint8(rgba).shape == (4, 5, 3) and as_rgb_uint8(rgba).max() == 0
    assert as_rgb_uint8(np.full((2, 2, 3), 1.0, np.float32)).max() == 255


@pytest.mark.parametrize("bad, match", [
    (np.zeros((0, 5, 3), np.uint8), "empty image"),
    (np.zeros((5, 5, 2), np.uint8), "HxWx3"),
    (np.zeros((2, 5, 5, 3), np.uint8), "HxWx3"),
    (np.zeros((5, 5, 3), np.int64), "unsupported image dtype int64"),
    (np.full((5, 5, 3), np.nan, np.float32), "75 NaN or infinite"),
    (np.full((5, 5, 3), 3.0, np.float32), r"\[0, 1\]"),
    ([[1, 2, 3]], "NumPy image array"),
])
def test_bad_images_are_refused_with_the_reason(bad, match) -> None:
    with pytest.raises(ImageError, match=match):
        as_rgb_uint8(bad)


def test_tiny_and_huge_images() -> None:
    assert preprocess_dpt(_image(1, 1)).network_size == (384, 384)
    assert preprocess_edaformer(_image(1, 1), "ade20k").network_size == (512, 512)
    big = preprocess_edaformer(np.zeros((4000, 6000, 3), np.uint8), "ade20k")
    assert big.network_size == (512, 768) and math.isfinite(float(big.tensor.sum()))


# ---- against the official code itself ----------------------------------------------------------
OFFICIAL_INPUTS = Path(__file__).resolve().parent / "golden" / "preprocess" / "official_inputs.json"


def _official_cases() -> list[dict]:
    return json.loads(OFFICIAL_INPUTS.read_text())["cases"]


@pytest.mark.golden
@pytest.mark.parametrize("case", _official_cases(),
                         ids=lambda c: f"{c['pipeline']}-{c['height']}x{c['width']}")
def test_network_input_is_the_official_codes_bit_for_bit(case: dict) -> None:
    """sha256 of what the official DPT / mmcv+mmseg transforms make of the same seeded image
    (golden/preprocess/official_inputs.json says how it was made); same OpenCV semantics assumed."""
    family, dataset = case["pipeline"].split("_", 1)
    rgb = np.random.default_rng(case["seed"]).integers(0, 256, (case["height"], case["width"], 3),
                                                       dtype=np.uint8)
    if "official_error" in case:  # the official code cannot size this image; ours clamps to 32
        assert "inv_scale_x > 0" in case["official_error"]
        assert min(preprocess_for(family, dataset, rgb).network_size) == 32
        return
    ours = np.ascontiguousarray(preprocess_for(family, dataset, rgb).tensor.numpy(), dtype=np.float32)
    assert list(ours.shape) == case["shape"]
    assert [float(v) for v in ours.reshape(-1)[:3]] == case["first"]
    assert hashlib.sha256(ours.tobytes()).hexdigest() == case["sha256"]


# ---- HRViT (shared/design/hrvit.md section 7) and ViT-CoMer (vit_comer.md section 6) ------------
@pytest.mark.parametrize("hw, dataset, expected", [
    ((512, 683), "ade20k", (512, 704)),  # the common ADE20K size the official HRViT cannot run
    ((480, 640), "ade20k", (512, 704)),
    ((512, 990), "ade20k", (512, 990)),  # 990 mod 32 = 30: runs as it is, left alone
    ((1024, 2048), "cityscapes", (1024, 2048)),
    ((720, 1280), "cityscapes", (1024, 1824)),  # 1820 -> 1824, the nearest size that runs
])
def test_hrvit_sizes_satisfy_the_rule(hw, dataset, expected) -> None:
    assert hrvit_network_size(*hw, dataset) == expected
    assert hrvit_size_problem(*expected) is None
    assert preprocess_for("hrvit", dataset, _image(*hw)).network_size == expected


@pytest.mark.parametrize("hw, dataset", [((512, 990), "ade20k"), ((1024, 2048), "cityscapes")])
def test_hrvit_input_is_the_official_input_where_the_official_network_runs(hw, dataset) -> None:
    """Official HRViT pipelines: keep-ratio rescale only (no alignment), mmseg normalisation."""
    rgb = _image(*hw, seed=2)
    scale = (2048, 1024) if dataset == "cityscapes" else (2048, 512)
    official = _official_edaformer_input(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), scale, align=False)
    assert np.array_equal(preprocess_hrvit(rgb, dataset).tensor.numpy(), official)


def test_hrvit_rounds_a_breaking_size_up_with_a_second_resize() -> None:
    rgb = _image(512, 683, seed=3)  # rescaled 512x683 breaks the rule; 704 = the next multiple of 32
    official_aligned = _official_edaformer_input(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), (2048, 512), align=True)
    assert np.array_equal(preprocess_hrvit(rgb, "ade20k").tensor.numpy(), official_aligned)


def test_hrvit_forced_size_must_satisfy_the_rule() -> None:
    assert preprocess_hrvit(_image(300, 400), input_size=(509, 221)).network_size == (509, 221)
    with pytest.raises(ValueError, match="mod 32"):
        preprocess_hrvit(_image(300, 400), input_size=(512, 683))
    with pytest.raises(ValueError, match="unknown dataset"):
        preprocess_hrvit(_image(300, 400), "cocostuff")


@pytest.mark.parametrize("hw, expected", [
    ((480, 640), (512, 704)), ((512, 683), (512, 704)), ((100, 3000), (96, 2048)),
])
def test_vit_comer_input_is_the_official_input_bit_for_bit(hw, expected) -> None:
    """keep-ratio rescale into (2048, 512), ResizeToMultiple(32), mmseg normalisation."""
    rgb = _image(*hw, seed=4)
    official = _official_edaformer_input(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), (2048, 512), align=True)
    ours = preprocess_for("vit_comer", "ade20k", rgb)
    assert ours.network_size == expected == vit_comer_network_size(*hw)
    assert np.array_equal(ours.tensor.numpy(), official)


def test_vit_comer_forced_size_must_be_a_multiple_of_32() -> None:
    assert preprocess_vit_comer(_image(300, 400), input_size=(384, 512)).network_size == (384, 512)
    with pytest.raises(ValueError, match="multiples of 32"):
        preprocess_vit_comer(_image(300, 400), input_size=(500, 512))
    with pytest.raises(ValueError, match="ade20k only"):
        preprocess_vit_comer(_image(300, 400), "cityscapes")

# ---- boundaries and dispatch (each test pins a rule a plausible slip would break) ---------------
def test_dpt_scale_uses_each_sides_own_target_and_ties_go_to_the_height() -> None:
    # a non-square target: the height's scale is 352/352 = 1 (kept), the width's 1216/2000 is not
    assert dpt_network_size(352, 2000, DPT_TARGETS["kitti"]) == (352, 1984)  # 62.5 * 32 -> 62 (half to even)
    # |1 - 0.5| == |1 - 1.5|: the height's scale 0.5 wins, not the width's 1.5
    assert dpt_network_size(768, 256, (384, 384)) == (384, 128)


def test_kitti_crop_accepts_exactly_the_crop_size_and_refuses_one_pixel_less() -> None:
    exact = _image(352, 1216)
    assert np.array_equal(kitti_crop(exact), exact)
    for height, width in ((351, 1216), (352, 1215)):
        with pytest.raises(ImageError, match=f"got {height}x{width}"):
            kitti_crop(_image(height, width))


def test_float_images_in_the_closed_unit_interval_become_rounded_uint8() -> None:
    grey = np.array([[0.0, 0.5, 1.0, 0.2]], np.float32)[..., None]
    rgb = as_rgb_uint8(grey)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 4, 3)
    assert rgb[0, :, 0].tolist() == [0, 128, 255, 51]  # rint(127.5) = 128, rint(51.0) = 51
    for outside in (-0.01, 1.5):
        with pytest.raises(ImageError, match=r"must lie in \[0, 1\]"):
            as_rgb_uint8(np.full((2, 2, 3), outside, np.float32))


def test_channels_are_kept_in_order_and_alpha_is_dropped() -> None:
    rgba = np.array([[[10, 20, 30, 40], [50, 60, 70, 80]]], np.uint8)
    assert as_rgb_uint8(rgba).tolist() == [[[10, 20, 30], [50, 60, 70]]]
    assert as_rgb_uint8(np.array([[[9], [8]]], np.uint8)).tolist() == [[[9, 9, 9], [8, 8, 8]]]


@pytest.mark.parametrize("bad, message", [
    (np.zeros((5, 0, 3), np.uint8), "empty image: shape (5, 0, 3)"),
    ([[1, 2, 3]], "expected a NumPy image array, got list"),
])
def test_image_errors_say_exactly_what_is_wrong(bad, message) -> None:
    with pytest.raises(ImageError) as error:
        as_rgb_uint8(bad)
    assert str(error.value) == message


def test_forced_sizes_are_positive_multiples() -> None:
    assert check_input_size((32, 64), 32) == (32, 64), "a side equal to the multiple is fine"
    assert check_input_size((33.0, 7), 1) == (33, 7)
    with pytest.raises(ValueError) as error:
        check_input_size((0, 64))
    assert str(error.value) == "network input size must be positive, got 0x64"
    with pytest.raises(ValueError) as error:
        check_input_size((48, 64), 32)
    assert str(error.value) == "network input size must be positive multiples of 32, got 48x64"
    # EDAFormer takes any forced size (no multiple), e.g. odd sides
    assert preprocess_edaformer(_image(40, 50), "ade20k", input_size=(33, 65)).network_size == (33, 65)


def test_rescale_never_gives_an_empty_side() -> None:
    # a 1-pixel-high panorama: factor 2048/10000 would round the height to 0
    assert rescale_size(1, 10000, (2048, 512)) == (1, 2048)
    assert rescale_size(10000, 1, (2048, 512)) == (2048, 1)


def test_aligned_size_rounds_each_side_up_to_32() -> None:
    # a portrait image: the height (683) is the side that needs rounding up, to 704
    assert edaformer_network_size(683, 512, "ade20k") == (704, 512)
    out = preprocess_edaformer(_image(683, 512, seed=2), "ade20k")
    assert out.network_size == (704, 512)
    official = _official_edaformer_input(cv2.cvtColor(_image(683, 512, seed=2), cv2.COLOR_RGB2BGR), (2048, 512), True)
    assert np.array_equal(out.tensor.numpy(), official)


def test_edaformer_defaults_to_ade20k_and_names_unknown_datasets() -> None:
    image = _image(48, 64)
    assert torch.equal(preprocess_edaformer(image).tensor, preprocess_edaformer(image, "ade20k").tensor)
    with pytest.raises(ValueError) as error:
        preprocess_edaformer(image, "voc")
    assert str(error.value) == "unknown dataset 'voc'; choose from ['ade20k', 'cityscapes', 'cocostuff']"


@pytest.mark.parametrize("family, dataset", [("dpt", "kitti"), ("dpt", "nyu"), ("edaformer", "cityscapes")])
def test_preprocess_for_dispatches_to_the_family_with_its_dataset(family: str, dataset: str) -> None:
    image = _image(360, 1230, seed=4)
    direct = (preprocess_dpt(image, DPT_TARGETS[dataset]) if family == "dpt"
              else preprocess_edaformer(image, dataset))
    via = preprocess_for(family, dataset, image)
    assert via.network_size == direct.network_size and torch.equal(via.tensor, direct.tensor)
    forced = preprocess_for(family, dataset, image, (64, 96))
    assert forced.network_size == (64, 96) and forced.image_size == (360, 1230)


def test_preprocess_for_rejects_other_families() -> None:
    with pytest.raises(ValueError) as error:
        preprocess_for("vit", "ade20k", _image(8, 8))
    message = str(error.value)
    assert message.startswith("unknown network family 'vit'; choose from dpt, edaformer, ")
    choices = message.split("choose from ")[1].split(", ")
    assert choices == sorted(choices) and {"hrvit", "vit_comer"} <= set(choices)
