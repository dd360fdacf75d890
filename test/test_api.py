"""The Python API: one image in, depth or labels at the image's size out."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dense_perception.api import DepthEstimator, Segmenter
from dense_perception.networks import CheckpointError, ISRSetting, build_network
from dense_perception.networks.common import fill_reference_weights
from dense_perception.pipeline.preprocess import ImageError, preprocess_dpt, preprocess_edaformer


def _checkpoint(tmp: Path, name: str, meta: dict | None = None) -> Path:
    """Seeded-rule weights. DPT's head ends in a ReLU that zeroes the whole output under that rule
    (pre-ReLU values measured in [-0.21, -0.09] at these inputs), so for DPT its last 1x1 conv is
    amplified and shifted: depth then varies over the image (raw values of order 10-100) and a wrong
    resize, order of conversion or pixel mix-up changes it."""
    net = build_network(name)
    path = tmp / f"{name}.pth"
    state = fill_reference_weights(net)
    if name.startswith("dpt"):
        state["scratch.output_conv.4.weight"] *= 1000.0
        state["scratch.output_conv.4.bias"].fill_(110.0)
    torch.save({"state_dict": state, "meta": meta or {}} if name.startswith("edaformer") else state, path)
    return path


def _record_network_io(estimator: DepthEstimator, network_size: tuple[int, int]) -> list[tuple]:
    """(input, output) of every forward of the estimator's torch network from now on."""
    calls: list[tuple] = []
    estimator.engine_for(network_size).net.register_forward_hook(
        lambda _module, args, out: calls.append((args[0].detach().clone(), out.detach().clone())))
    return calls


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="module")
def segmenter(ckpt_dir: Path) -> Segmenter:
    meta = {"CLASSES": tuple(f"c{i}" for i in range(150)), "PALETTE": [[i, i, i] for i in range(150)]}
    return Segmenter("edaformer_t_ade20k", checkpoint=_checkpoint(ckpt_dir, "edaformer_t_ade20k", meta),
                     backend="torch", input_size=(96, 128))


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_segmenter_labels_at_image_size_equal_the_network_path(segmenter: Segmenter) -> None:
    image = _image(75, 101)
    result = segmenter.predict(image, with_confidence=True)
    assert result.labels.shape == (75, 101) and result.labels.dtype == np.uint8
    assert result.confidence.shape == (75, 101) and not result.untrained
    assert result.network_size == (96, 128) and result.isr == ISRSetting()
    net = build_network("edaformer_t_ade20k")
    net.load_state_dict(fill_reference_weights(net))
    with torch.no_grad():
        logits = net(preprocess_edaformer(image, "ade20k", (96, 128)).tensor)
    full = F.interpolate(F.interpolate(logits, size=(96, 128), mode="bilinear", align_corners=False),
                         size=(75, 101), mode="bilinear", align_corners=False)
    assert np.array_equal(result.labels, full.argmax(1)[0].numpy().astype(np.uint8))


def test_class_names_and_palette_come_from_the_checkpoint(segmenter: Segmenter) -> None:
    assert segmenter.class_names[:2] == ("c0", "c1") and len(segmenter.class_names) == 150
    assert segmenter.palette.shape == (150, 3) and segmenter.palette[5].tolist() == [5, 5, 5]


def test_live_isr_and_rejections(segmenter: Segmenter) -> None:
    image = _image(96, 128, seed=3)
    base = segmenter.predict(image).labels
    assert segmenter.set_isr(ratio=2) == ISRSetting.from_ratio(2)
    reduced = segmenter.predict(image)
    assert reduced.isr == ISRSetting.from_ratio(2) and not np.array_equal(base, reduced.labels)
    with pytest.raises(ValueError, match="ISR"):
        segmenter.set_isr(ratio=0)
    assert segmenter.isr == ISRSetting.from_ratio(2), "a rejected value changes nothing"
    with pytest.raises(ValueError, match="encoder stage 1 has a 24x32 feature map"):
        segmenter.check_isr(ISRSetting.from_ratio(4), 480, 640)  # forced input size 96x128
    segmenter.set_isr(ratio=1)
    assert np.array_equal(segmenter.predict(image).labels, base)


def test_fast_label_mode_and_official_size(ckpt_dir: Path) -> None:
    path = _checkpoint(ckpt_dir, "edaformer_t_cityscapes")
    official = Segmenter("edaformer_t_cityscapes", checkpoint=path, backend="torch")
    assert official.network_size_for(1024, 2048) == (1024, 2048)
    assert official.network_size_for(240, 320) == (1024, 1365), "keep-ratio rescale into (2048, 1024)"
    seg = Segmenter("edaformer_t_cityscapes", checkpoint=path, backend="torch", label_mode="fast",
                    input_size=(64, 64))
    result = seg.predict(_image(48, 64))
    assert result.labels.shape == (48, 64) and result.labels.max() < 19 and seg.class_names[0] == "road"


@pytest.mark.parametrize("network, kind", [("dpt_hybrid_midas", "relative_inverse"), ("dpt_hybrid_nyu", "metric")])
def test_depth_at_image_size(ckpt_dir: Path, network: str, kind: str) -> None:
    est = DepthEstimator(network, checkpoint=_checkpoint(ckpt_dir, network), backend="torch",
                         input_size=(64, 96))
    calls = _record_network_io(est, (64, 96))
    image = _image(50, 70)
    result = est.predict(image)
    assert result.depth.shape == (50, 70) and result.depth.dtype == np.float32
    assert result.kind == kind and result.is_metric == (kind == "metric")
    [(network_input, raw)] = calls
    assert torch.equal(network_input, preprocess_dpt(image, input_size=(64, 96)).tensor)
    assert raw.shape == (1, 64, 96) and float(raw.std()) > 1.0, "the amplified head gives a varying depth"
    # shared/design/dpt.md section 9, written out: metres (1 / (scale * raw + shift)) at network
    # resolution first for metric heads, then one bicubic resize (align_corners=False) to the image
    at_network = 1 / torch.clamp(raw * 0.000305 + 0.1378, min=1e-8) if kind == "metric" else raw
    expected = F.interpolate(at_network[:, None], size=(50, 70), mode="bicubic", align_corners=False)[0, 0]
    np.testing.assert_allclose(result.depth, expected.numpy(), rtol=1e-5)


def test_midas_scale_shift_gives_metres(ckpt_dir: Path) -> None:
    path = _checkpoint(ckpt_dir, "dpt_hybrid_midas")
    est = DepthEstimator("dpt_hybrid_midas", checkpoint=path, backend="torch", input_size=(64, 64),
                         depth_scale=2.0, depth_shift=0.5)
    calls = _record_network_io(est, (64, 64))
    result = est.predict(_image(64, 64))
    assert result.kind == "metric_fitted" and result.is_metric
    [(_, inverse_depth)] = calls  # the image is the network size: no resize
    np.testing.assert_allclose(result.depth, 1 / (2.0 * inverse_depth[0].numpy() + 0.5), rtol=1e-6)
    with pytest.raises(ValueError, match="both"):
        DepthEstimator("dpt_hybrid_midas", checkpoint=path, depth_scale=2.0)


def test_untrained_weights_are_stamped_and_wrong_checkpoints_refused(ckpt_dir: Path, caplog) -> None:
    seg = Segmenter("edaformer_t_ade20k", backend="torch", input_size=(64, 64))
    assert seg.untrained and seg.predict(_image(64, 64)).untrained
    assert "UNTRAINED" in caplog.text
    with pytest.raises(CheckpointError, match="does not fit"):
        Segmenter("edaformer_t_cityscapes", checkpoint=_checkpoint(ckpt_dir, "edaformer_t_ade20k"))
    with pytest.raises(ValueError, match="is a depth network"):
        Segmenter("dpt_hybrid_midas")
    with pytest.raises(ValueError, match="unknown backend"):
        Segmenter("edaformer_t_ade20k", backend="cuda")


@pytest.mark.parametrize("bad", [np.zeros((0, 4, 3), np.uint8), np.full((8, 8, 3), np.nan, np.float32),
                                 np.zeros((8, 8, 3), np.int16)])
def test_bad_images_raise_image_error(segmenter: Segmenter, bad: np.ndarray) -> None:
    with pytest.raises(ImageError):
        segmenter.predict(bad)
