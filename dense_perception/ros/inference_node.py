"""The base of the ``depth`` and ``seg`` nodes: parameters, image input, latest-frame inference.

:class:`InferenceNode` declares the common parameters (model source, QoS, colour output,
diagnostics) from :mod:`.params` tables, subscribes ``image`` (or ``image/compressed``) with the
latest-frame QoS, decodes on a worker thread (never on the executor thread) and hands the RGB frame
to the subclass's :meth:`InferenceNode.process`. The subclass builds its predictor from the API
(:mod:`dense_perception.api`) and publishes; all conversions are the ROS-free helpers of
:mod:`dense_perception.io` and :mod:`dense_perception.pipeline`.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
from rcl_interfaces.msg import ParameterType
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image

from ..api import BACKENDS
from ..engines.base import PRECISIONS
from ..io.images import ImageFormatError, message_to_rgb
from ..pipeline.preprocess import check_input_size
from .diagnostics import FrameDiagnostics, FrameTiming
from .params import ParamSpec, current_values, declare_parameters, make_validator
from .qos import QOS_PARAMETERS, qos_from_parameters
from .runtime import ThrottledWarnings
from .sync import LatestFrameWorker, stamp_key


#: Parameters both inference nodes declare (``network`` differs per node and is added by each).
COMMON_PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("checkpoint", "", "Checkpoint file of the network; empty = untrained random weights "
              "(outputs are meaningless; the node logs a warning)", read_only=True),
    ParamSpec("backend", "auto", "Inference backend: auto, torch, onnxruntime or tensorrt",
              read_only=True, choices=BACKENDS),
    ParamSpec("precision", "fp32", "Inference precision: fp32; fp16 or bf16 (CUDA only); int8 (ONNX "
              "Runtime on the CPU, faster at an accuracy cost)", read_only=True, choices=PRECISIONS),
    ParamSpec("calibration", "", "int8 only: image file or folder calibrating the quantised graph; "
              "empty = the bundled sample photograph", read_only=True),
    ParamSpec("device", "", "Torch device, e.g. cuda:0 or cpu; empty = CUDA when available",
              read_only=True),
    ParamSpec("compressed", False, "Subscribe sensor_msgs/CompressedImage on 'image/compressed' "
              "instead of sensor_msgs/Image on 'image'", read_only=True),
    ParamSpec("publish_colored", True, "Publish the colour view (rgb8) besides the data image"),
    ParamSpec("diagnostics_period", 1.0, "Seconds between /diagnostics messages",
              read_only=True, minimum=0.1, maximum=60.0),
    ParamSpec("log_period", 10.0, "Seconds between the log lines summarising frame rate, latency "
              "and drops", read_only=True, minimum=1.0, maximum=3600.0),
) + QOS_PARAMETERS

#: ``input_size`` (both nodes): an integer list (empty = the official per-image resize).
INPUT_SIZE = ParamSpec(
    "input_size", [], "Network input [height, width]; empty = the network's official resize of "
    "each image (keep aspect). A fixed size suits fixed-shape engines (ONNX Runtime, TensorRT)",
    read_only=True, param_type=ParameterType.PARAMETER_INTEGER_ARRAY)


def input_size_problem(size: Sequence[int], multiple: int = 1) -> str | None:
    """Why ``input_size`` is unusable (not empty nor two positive multiples of ``multiple``)."""
    if len(size) == 0:
        return None
    if len(size) != 2:
        return f"input_size must be empty or [height, width], got {list(size)}"
    try:
        check_input_size((size[0], size[1]), multiple)
    except ValueError as error:
        return f"input_size: {error}"
    return None


def optional_size(size: Sequence[int]) -> tuple[int, int] | None:
    """``input_size`` as the API takes it: None when empty."""
    return (int(size[0]), int(size[1])) if len(size) == 2 else None


def predictor_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :class:`~dense_perception.api.DepthEstimator` and ``Segmenter`` that
    come from :data:`COMMON_PARAMETERS` and ``input_size`` (empty strings and sizes mean "default")."""
    return {"checkpoint": values["checkpoint"] or None, "backend": values["backend"],
            "precision": values["precision"], "device": values["device"] or None,
            "input_size": optional_size(values["input_size"]),
            "calibration": [values["calibration"]] if values["calibration"] else None}


@dataclass
class Frame:
    """An input message and when it arrived (``time.monotonic()``)."""

    msg: Image | CompressedImage
    received: float


R = TypeVar("R")


@dataclass
class Listeners(Generic[R]):
    """Callbacks receiving each processed frame in memory (the one-process composition)."""

    callbacks: list[Callable[[R], None]] = field(default_factory=list)

    def add(self, callback: Callable[[R], None]) -> None:
        self.callbacks.append(callback)

    def emit(self, result: R) -> None:
        for callback in self.callbacks:
            callback(result)


class InferenceNode(Node):
    """Base of the ``depth`` and ``seg`` nodes; see the module docstring.

    A subclass gives its parameter tables and implements :meth:`build` (the predictor),
    :meth:`apply_parameters` (dynamic parameters, called at start and after each accepted change,
    on the executor thread), :meth:`process` (one decoded frame, on the worker thread) and
    optionally :meth:`check_parameters` (cross-parameter validation) and :meth:`diagnostic_values`.
    """

    #: ``input_size`` must be a multiple of this (DPT: 32).
    input_multiple = 1

    def __init__(self, node_name: str, specs: Sequence[ParamSpec],
                 list_specs: Sequence[ParamSpec] = (INPUT_SIZE,), **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.warnings = ThrottledWarnings(self)
        self.specs = tuple(specs) + COMMON_PARAMETERS + tuple(list_specs)
        declare_parameters(self, self.specs)
        values = current_values(self, self.specs)
        if problem := input_size_problem(values["input_size"], self.input_multiple):
            raise ValueError(f"invalid parameters for node {node_name}: {problem}")
        #: (height, width) of the last decoded image, None before the first
        self.last_image_size: tuple[int, int] | None = None
        self.build(values)  # the predictor, which check_parameters may need
        if problem := self.check_parameters(values):
            raise ValueError(f"invalid parameters for node {node_name}: {problem}")
        self.apply_parameters(values)
        self.add_on_set_parameters_callback(make_validator(self, self.specs, self.check_parameters))
        self.add_post_set_parameters_callback(
            lambda _changed: self.apply_parameters(current_values(self, self.specs)))

        self.input_qos, self.output_qos = qos_from_parameters(self)
        if values["compressed"]:
            self.image_sub = self.create_subscription(
                CompressedImage, "image/compressed", self._on_image, self.input_qos)
        else:
            self.image_sub = self.create_subscription(
                Image, "image", self._on_image, self.input_qos)
        self.timing = FrameTiming()
        self.worker: LatestFrameWorker[Frame] = LatestFrameWorker(
            self._handle, name=f"{node_name}-inference", on_error=self._on_inference_error)
        self.diagnostics = FrameDiagnostics(
            self, self.worker, self.timing, self.diagnostic_values, values["diagnostics_period"],
            values["log_period"], hardware_id=values["device"] or "auto")

    # -- subclass hooks ---------------------------------------------------------------------------

    def build(self, values: Mapping[str, Any]) -> None:
        """Create the predictor from the start-up parameter values."""
        raise NotImplementedError

    def check_parameters(self, values: Mapping[str, Any]) -> str | None:
        """Why a candidate set of parameter values is invalid, or None."""
        return None

    def apply_parameters(self, values: Mapping[str, Any]) -> None:
        """Take the (validated) dynamic parameters into use from the next frame on."""

    def process(self, rgb: np.ndarray, header: Any) -> None:
        """Infer on one RGB frame and publish; runs on the worker thread."""
        raise NotImplementedError

    def diagnostic_values(self) -> dict[str, Any]:
        """Node-specific key/values for ``/diagnostics``."""
        return {}

    # -- frames -----------------------------------------------------------------------------------

    def _on_image(self, msg: Image | CompressedImage) -> None:
        """Executor thread: hand the message over, never block (a waiting frame is superseded)."""
        self.worker.submit(Frame(msg, time.monotonic()))

    def _handle(self, frame: Frame) -> None:
        """Worker thread: decode, infer and publish one frame; bad input is logged and skipped."""
        header = frame.msg.header
        try:
            rgb = message_to_rgb(frame.msg)
        except ImageFormatError as error:
            self.diagnostics.rejected += 1
            self.warnings.warn("bad_image", (
                f"skipped image {stamp_key(header.stamp)} on {self.image_sub.topic_name}: "
                f"{error}"))
            return
        self.last_image_size = (int(rgb.shape[0]), int(rgb.shape[1]))
        self.process(rgb, header)
        self.timing.record(time.monotonic() - frame.received)

    def _on_inference_error(self, error: BaseException) -> None:
        self.warnings.warn("inference", f"inference failed: {type(error).__name__}: {error}")

    def destroy_node(self) -> None:
        """Stop the worker (after the frame in progress), then the node."""
        self.worker.stop()
        super().destroy_node()
