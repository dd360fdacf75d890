"""int8 graphs for ONNX Runtime on the CPU: static post-training quantisation of an exported fp32 graph.

Why: on a CPU without AVX-512 the fp32 networks already run near the cores' FMA peak (bench/RESULTS.md),
so only less arithmetic per multiply-add makes DPT faster. ONNX Runtime's int8 kernels do 8-bit
multiply-adds with 32-bit accumulation, about twice the fp32 rate on AVX2.

How (``onnxruntime.quantization``, nothing hand-written):

1. ``quant_pre_process`` (shape inference, the optimisations the quantiser expects);
2. ``quantize_static`` in QDQ format: weights int8 per output channel, activations uint8 per tensor with
   min/max ranges observed on calibration inputs (the U8S8 pairing ONNX Runtime recommends on x86).
   Only Conv, MatMul and Gemm nodes with a constant weight are quantised -- attention's
   activation-by-activation products, normalisations, softmax, GELU and resizes stay float32;
3. ONNX Runtime fuses each DequantizeLinear → op → QuantizeLinear group into its integer kernels when it
   loads the graph.

Calibration inputs come from real images through the network family's one pre-processing path
(:func:`~..pipeline.preprocess.preprocess_with`) at the graph's input size: by default deterministic crops
and mirror images of the bundled sample photograph; pass your own camera frames for ranges that fit
your scenes. The calibration set is part of the graph's identity (its label is in the metadata and the
graph cache key).

Accuracy is a trade, so int8 is opt-in (``precision="int8"``), never chosen automatically. Measured on
this project's seeded weights, DPT-Hybrid's pre-ReLU depth moves by about 3 % of its mean magnitude
(``test/test_quantize.py`` bounds it); trained weights can behave differently -- compare a predictor
with ``precision="int8"`` against one with ``"fp32"`` on your checkpoint and your frames before use.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import onnx

from ..networks.registry import network_spec
from .base import EngineError

log = logging.getLogger(__name__)

#: Calibration inputs made from the images (crops and mirror images spread over them).
DEFAULT_CALIBRATION_INPUTS = 8
#: Operators quantised when their second input (the weight) is a constant.
QUANTISED_OPS = ("Conv", "MatMul", "Gemm")


@contextlib.contextmanager
def calibration_files(paths: Sequence[str | os.PathLike] | None) -> Iterator[list[Path]]:
    """The calibration images, for a ``with`` block: ``paths`` (files; folders contribute their image
    files, sorted) or, for None/empty, the bundled sample photograph (a file while the block is open,
    also from a zipped install). ``ValueError`` when a path yields no image file."""
    from ..io.sources import IMAGE_SUFFIXES, sample_image

    if not paths:
        with sample_image() as sample:
            yield [Path(sample)]
        return
    files: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found = sorted(p for p in entry.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ValueError(f"calibration folder {entry} holds no image files")
            files.extend(found)
        elif entry.is_file():
            files.append(entry)
        else:
            raise ValueError(f"calibration image {entry}: no such file or folder")
    yield files


def calibration_label(paths: Sequence[str | os.PathLike] | None) -> str:
    """What identifies a calibration set in graph metadata: file count and a digest of the bytes."""
    digest = hashlib.sha256()
    with calibration_files(paths) as files:
        for path in files:
            digest.update(path.read_bytes())
    name = files[0].name if len(files) == 1 else f"{len(files)} images"
    return f"{name} sha256:{digest.hexdigest()[:16]}"


def _views(image: np.ndarray, count: int) -> list[np.ndarray]:
    """``count`` deterministic views of an image: the whole frame, then crops shrinking to 60 % of each
    side at spread positions; every second view mirrored."""
    height, width = image.shape[:2]
    views = []
    for i in range(count):
        fraction = 1.0 - 0.4 * i / max(1, count - 1)
        crop_h, crop_w = max(1, round(height * fraction)), max(1, round(width * fraction))
        # positions walk the free margin with the golden ratio, so crops do not repeat one corner
        top = round((height - crop_h) * ((i * 0.618) % 1.0))
        left = round((width - crop_w) * ((i * 0.382) % 1.0))
        view = image[top:top + crop_h, left:left + crop_w]
        views.append(np.ascontiguousarray(view[:, ::-1] if i % 2 else view))
    return views


def calibration_inputs(network: str, height: int, width: int,
                       paths: Sequence[str | os.PathLike] | None = None,
                       count: int = DEFAULT_CALIBRATION_INPUTS) -> list[np.ndarray]:
    """Network inputs ``[1, 3, height, width]`` float32 for calibrating ``network``'s graph: views of the
    calibration images (see :func:`calibration_files`) through the network's official pre-processing."""
    from ..io.sources import read_image_rgb
    from ..pipeline.preprocess import preprocess_with

    spec = network_spec(network)
    inputs = []
    with calibration_files(paths) as files:
        per_image = max(1, -(-count // len(files)))  # ceil: at least ``count`` inputs in all
        for path in files:
            try:
                image = read_image_rgb(path)
            except ValueError as exc:
                raise ValueError(f"calibration image {path}: {exc}") from None
            for view in _views(image, per_image):
                inputs.append(preprocess_with(spec.preprocessing, view, (height, width)).tensor.numpy())
    return inputs


def quantisable_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the :data:`QUANTISED_OPS` nodes whose weight (second input) is a constant initializer."""
    constants = {init.name for init in model.graph.initializer}
    return [node.name for node in model.graph.node
            if node.op_type in QUANTISED_OPS and len(node.input) > 1 and node.input[1] in constants]


def quantize_int8(model: onnx.ModelProto, inputs: Sequence[np.ndarray], input_name: str) -> onnx.ModelProto:
    """The QDQ int8 version of an fp32 graph, calibrated on ``inputs`` (see the module docstring)."""
    try:
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                              QuantType, quantize_static)
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise EngineError("int8 export needs onnxruntime's quantisation tools: pip install onnxruntime") from None
    if not inputs:
        raise ValueError("int8 calibration needs at least one input")

    class Feed(CalibrationDataReader):
        def __init__(self) -> None:
            self._inputs = iter(inputs)

        def get_next(self) -> dict[str, np.ndarray] | None:
            array = next(self._inputs, None)
            return None if array is None else {input_name: array}

    with tempfile.TemporaryDirectory(prefix="dp_int8_") as folder:
        fp32_path, prepared_path, int8_path = (os.path.join(folder, f"{n}.onnx") for n in ("fp32", "pre", "int8"))
        onnx.save(model, fp32_path)
        quant_pre_process(fp32_path, prepared_path, skip_symbolic_shape=True)
        nodes = quantisable_nodes(onnx.load(prepared_path, load_external_data=False))
        log.info("int8: calibrating %d nodes on %d inputs", len(nodes), len(inputs))
        with warnings.catch_warnings():
            # min == max == 0 ranges (constant-zero tensors) make numpy warn while computing zero points
            warnings.simplefilter("ignore", RuntimeWarning)
            quantize_static(prepared_path, int8_path, Feed(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_quantize=nodes, calibrate_method=CalibrationMethod.MinMax)
        return onnx.load(int8_path)
