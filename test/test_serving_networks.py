"""Every registered segmenter served through the Python API: official test mode (whole or sliding
windows), ISR through the network's own scheme (or refused, for networks without ISR), the frame
budget's ladder, ONNX export at two sizes and the ONNX Runtime engine's background ISR swap.

Untrained (seeded) weights at small fixed input sizes; what is checked is the serving path against
the network's own forward. About a minute on 2 cores (the ONNX Runtime swap exports two graphs).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dense_perception.api import ISR_BUDGET_LADDER, Segmenter, build_untrained
from dense_perception.engines.export import export_onnx, read_graph_info
from dense_perception.engines.onnx_engine import OnnxRuntimeEngine
from dense_perception.networks import ISRSetting, available_networks, network_spec
from dense_perception.networks.isr import EDAFORMER_ISR
from dense_perception.networks.registry import Inference
from dense_perception.pipeline.preprocess import preprocess_with
from dense_perception.pipeline.sliding import sliding_windows

#: The smallest network of each family and attention kind.
SMALLEST = ("edaformer_t_ade20k", "segformer_b0_ade20k", "pvt_v2_b0_fpn_ade20k", "pvt_tiny_fpn_ade20k",
            "hrvit_b1_segformer_ade20k", "vit_comer_t_upernet_ade20k")
SIZE = (64, 64)
SEGFORMER_TRAINING = ISRSetting((8, 4, 2, 1), ())


def _image(height: int = 48, width: int = 80, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _official_labels(name: str, image: np.ndarray, size: tuple[int, int], isr: ISRSetting | None = None) -> np.ndarray:
    """Whole-image labels written out: the network's official input at ``size``, its forward, logits
    resized bilinearly to the input and then to the image, argmax."""
    net = build_untrained(name)
    if isr is not None:
        net.set_isr(isr)
    prepared = preprocess_with(network_spec(name).preprocessing, image, size)
    with torch.no_grad():
        logits = net(prepared.tensor)
    logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    logits = F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)
    return logits.argmax(1)[0].numpy()


def test_every_segmenter_is_registered_with_its_official_test_mode() -> None:
    names = available_networks("segmentation")
    assert set(SMALLEST) <= set(names)
    modes = {name: network_spec(name).inference for name in names}
    # the official test pipelines (shared/design/*.md): Cityscapes and ViT-CoMer slide, the others whole
    for name, inference in modes.items():
        expected = "slide" if name.endswith("cityscapes") or name.startswith("vit_comer") else "whole"
        assert inference.mode == expected, name
    assert modes["edaformer_t_cityscapes"] == Inference("slide", (1024, 1024), (768, 768))
    assert modes["hrvit_b1_segformer_cityscapes"] == Inference("slide", (1024, 1024), (768, 768))
    assert modes["vit_comer_t_upernet_ade20k"] == Inference("slide", (512, 512), (341, 341))
    assert modes["segformer_b5_ade20k"] == Inference("whole", (640, 640), (426, 426))


@pytest.mark.parametrize("name", SMALLEST)
def test_segmenter_serves_each_family_like_its_own_forward(name: str) -> None:
    seg = Segmenter(name, backend="torch", input_size=SIZE, inference="whole")
    image = _image()
    result = seg.predict(image)
    assert result.labels.shape == image.shape[:2] and result.network_size == SIZE and result.untrained
    assert result.labels.max() < network_spec(name).num_classes == len(seg.class_names)
    assert np.array_equal(result.labels, _official_labels(name, image, SIZE))
    assert seg.inference.mode == "whole" and seg.has_isr == (network_spec(name).isr is not None)


def test_sliding_windows_are_the_official_ones() -> None:
    # a 1024x2048 Cityscapes frame: 3 windows at x = 0, 768, 1024 (shared/design/sra.md section 5)
    assert sliding_windows(1024, 2048, (1024, 1024), (768, 768)) == [
        (0, 1024, 0, 1024), (0, 1024, 768, 1792), (0, 1024, 1024, 2048)]
    # a 512x704 ADE20K input of ViT-CoMer: 2 windows at x = 0 and 192 (vit_comer.md section 6)
    assert sliding_windows(512, 704, (512, 512), (341, 341)) == [(0, 512, 0, 512), (0, 512, 192, 704)]
    assert sliding_windows(40, 30, (512, 512), (341, 341)) == [(0, 40, 0, 30)], "smaller than a window"


def test_slide_mode_averages_the_windows_logits() -> None:
    seg = Segmenter("segformer_b0_ade20k", backend="torch", input_size=(96, 128), inference="slide")
    seg.inference = Inference.slide(64, 40)  # windows smaller than the input, so that several overlap
    image = _image(60, 90, seed=3)
    logits, prepared = seg.logits(image)
    net = build_untrained("segformer_b0_ade20k")
    canvas, count = torch.zeros(1, 150, 96, 128), torch.zeros(96, 128)
    for top in (0, 32):  # rows: 0 and the last window moved back to end at 96
        for left in (0, 40, 64):  # columns: 0, 40 and the last one ending at 128
            with torch.no_grad():
                out = net(prepared.tensor[:, :, top:top + 64, left:left + 64])
            canvas[:, :, top:top + 64, left:left + 64] += F.interpolate(out, size=(64, 64), mode="bilinear",
                                                                        align_corners=False)
            count[top:top + 64, left:left + 64] += 1
    assert count.min() >= 1 and count.max() == 4
    torch.testing.assert_close(logits, canvas / count, rtol=1e-4, atol=1e-4)
    result = seg.predict(image)
    expected = F.interpolate(canvas / count, size=(60, 90), mode="bilinear", align_corners=False).argmax(1)[0]
    assert np.array_equal(result.labels, expected.numpy())


def test_segformer_isr_through_its_own_scheme() -> None:
    seg = Segmenter("segformer_b0_ade20k", backend="torch", input_size=SIZE)
    image = _image(seed=1)
    assert seg.isr == SEGFORMER_TRAINING and seg.predict(image).isr == SEGFORMER_TRAINING
    assert seg.set_isr(2) == ISRSetting((16, 8, 4, 1), ()), "stage 4 has no reduction path: it stays 1"
    result = seg.predict(image)
    assert result.isr == seg.isr == ISRSetting((16, 8, 4, 1), ())
    assert np.array_equal(result.labels, _official_labels("segformer_b0_ade20k", image, SIZE, result.isr))
    with pytest.raises(ValueError, match="stage 4 has no key/value reduction path"):
        seg.set_isr(encoder=[16, 8, 2, 2])
    with pytest.raises(ValueError, match="multiple of 8"):
        seg.set_isr(encoder=[12, 8, 2, 1])
    with pytest.raises(ValueError, match=r"does not fit a 64x64 input \(it needs at least 93x93\)"):
        seg.set_isr(3)  # [24,12,6,1]: 24 > the 16x16 stage-1 map
    assert seg.isr == ISRSetting((16, 8, 4, 1), ()), "a refused setting changes nothing"
    assert seg.set_isr("[16,8,2,1]") == ISRSetting((16, 8, 2, 1), ()) and seg.isr_control.state.requested == \
        ISRSetting((16, 8, 2, 1), ())


@pytest.mark.parametrize("name, attention", [("hrvit_b1_segformer_ade20k", "HRViT's cross-shaped stripe attention"),
                                             ("vit_comer_t_upernet_ade20k", "ViT-CoMer's global ViT attention")])
def test_networks_without_isr_refuse_it_with_the_reason(name: str, attention: str) -> None:
    with pytest.raises(ValueError, match=f"^ISR does not apply to {attention}"):
        Segmenter(name, backend="torch", input_size=SIZE, isr=2)
    seg = Segmenter(name, backend="torch", input_size=SIZE)
    assert seg.isr is None and seg.isr_control is None and not seg.has_isr
    assert seg.set_isr(1) is None and seg.isr_text(seg.isr) == "no ISR"
    for asked in (2, ISRSetting((16, 8, 2, 1), ())):
        with pytest.raises(ValueError, match=f"^ISR does not apply to {attention}"):
            seg.set_isr(asked)
    with pytest.raises(ValueError, match="ISR does not apply"):
        seg.set_isr(encoder=[16, 8, 2, 1])
    assert seg.predict(_image()).isr is None


def test_frame_budget_ladders_are_the_networks_own() -> None:
    segformer = Segmenter("segformer_b0_ade20k", backend="torch", input_size=SIZE, frame_budget_ms=5000)
    segformer.predict(_image())
    state = segformer.budget_state
    # training, the paper's [16,8,2,1], x2 = [16,8,4,1]; x3 and x4 do not fit a 16x16 stage-1 map
    assert state.served == SEGFORMER_TRAINING and state.rungs == 3
    assert network_spec("segformer_b0_ade20k").isr.budget_ladder()[:3] == (
        SEGFORMER_TRAINING, ISRSetting((16, 8, 2, 1), ()), ISRSetting((16, 8, 4, 1), ()))
    assert ISR_BUDGET_LADDER == EDAFORMER_ISR.budget_ladder() and ISR_BUDGET_LADDER[:3] == (
        ISRSetting(), ISRSetting((8, 4, 2, 1), (2, 4, 8)), ISRSetting((16, 8, 2, 1), (2, 4, 8)))
    hrvit = Segmenter("hrvit_b1_segformer_ade20k", backend="torch", input_size=(128, 128), frame_budget_ms=5000)
    result = hrvit.predict(_image())
    state = hrvit.budget_state
    # no ISR: input sizes from the official one down, multiples of 32 (which HRViT's size rule accepts):
    # 1, 0.875, 0.75, ... of 128 round to 128, 128, 96, 64, 64, 64 -> three rungs
    assert state.served == result.network_size == (128, 128) and state.rungs == 3
    assert result.isr is None


def test_onnx_export_at_two_sizes_with_isr_stamped(tmp_path: Path) -> None:
    net = build_untrained("segformer_b0_ade20k")
    net.set_isr(2)
    for height, width in ((64, 64), (96, 128)):
        path = export_onnx(net, tmp_path / f"b0_{height}x{width}.onnx", height, width)
        info = read_graph_info(path)
        assert (info.height, info.width, info.isr) == (height, width, "[16,8,4,1]")
        x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(height))
        with torch.no_grad():
            expected = net(x)
        got = OnnxRuntimeEngine(path, threads=2).infer(x)
        assert got.shape == (1, 150, height // 4, width // 4)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_onnxruntime_swaps_segformer_isr_in_the_background(tmp_path: Path) -> None:
    seg = Segmenter("segformer_b0_ade20k", backend="onnxruntime", input_size=SIZE, engine_dir=tmp_path)
    image = _image(seed=2)
    assert seg.predict(image).isr == SEGFORMER_TRAINING
    with pytest.raises(ValueError, match="does not fit"):
        seg.set_isr(3)
    started = time.perf_counter()
    assert seg.set_isr(2) == ISRSetting((16, 8, 4, 1), ())
    assert time.perf_counter() - started < 1.0, "the graph is exported in the background"
    deadline = time.monotonic() + 120
    while seg.isr != ISRSetting((16, 8, 4, 1), ()) and time.monotonic() < deadline:
        seg.predict(image)  # keeps serving the training setting meanwhile
        time.sleep(0.05)
    state = seg.isr_control.state
    assert state.served == state.requested == ISRSetting((16, 8, 4, 1), ()) and not state.building
    logits, prepared = seg.logits(image)
    net = build_untrained("segformer_b0_ade20k")
    net.set_isr(2)
    with torch.no_grad():
        torch.testing.assert_close(logits, net(prepared.tensor), rtol=1e-4, atol=1e-4)
