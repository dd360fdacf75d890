"""The base of the ``depth`` and ``seg`` nodes: parameters, image input, latest-frame inference.

:class:`InferenceNode` declares the common parameters (model source, QoS, colour output,
diagnostics, input limits) from :mod:`.params` tables, subscribes ``image`` (or
``image/compressed``) with the latest-frame QoS, decodes on a worker thread (never on the executor
thread) and hands the RGB frame to the subclass's :meth:`InferenceNode.process`. The subclass builds
its predictor from the API (:mod:`dense_perception.api`) and publishes with :meth:`publish`; all
conversions are the ROS-free helpers of :mod:`dense_perception.io` and :mod:`dense_perception.pipeline`.

What the base guarantees for any input and at any moment:

* An image larger than ``max_input_pixels`` is rejected before it is decoded; an image that cannot
  be decoded is rejected; each with one throttled warning and a count in ``/diagnostics``.
* Inputs lost on the way (the middleware reports them) are counted in ``/diagnostics``.
* Nothing is published once the node closes or its context shuts down (:meth:`close`, called by
  :func:`.runtime.run_nodes` on Ctrl-C), and no error is logged for it.
* Frames are kept by stamp for a short while (:meth:`require_stamp`), so that a frame another node
  has started on can be processed here too (pairing depth and labels, :mod:`dense_perception.pipeline.pairing`).
"""
from __future__ import annotations

import copy
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
from rcl_interfaces.msg import ParameterType
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CompressedImage, Image

from ..api import BACKENDS, frame_budget_problem
from ..engines.base import PRECISIONS
from ..io.images import DEFAULT_MAX_INPUT_PIXELS, ImageFormatError, message_to_rgb
from ..pipeline.preprocess import check_input_size
from .compat import SubscriptionEventCallbacks
from .diagnostics import FrameDiagnostics, FrameTiming
from .params import ParamSpec, add_parameter_callbacks, current_values, declare_parameters
from .qos import QOS_PARAMETERS, qos_from_parameters
from .runtime import ClosingNode, ThrottledWarnings, forward_python_logging
from .sync import LatestFrameWorker, StampKey, stamp_key

#: Frames kept by stamp for :meth:`InferenceNode.require_stamp` (a claim arrives within a frame or two).
RECENT_FRAMES = 8

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
    ParamSpec("engine_cache", "", "Folder of the ONNX Runtime graphs and TensorRT engines built for "
              "this node; empty = $DENSE_PERCEPTION_CACHE, else ~/.cache/dense_perception/engines",
              read_only=True),
    ParamSpec("compressed", False, "Subscribe sensor_msgs/CompressedImage on 'image/compressed' "
              "instead of sensor_msgs/Image on 'image'", read_only=True),
    ParamSpec("max_input_pixels", DEFAULT_MAX_INPUT_PIXELS, "Largest input image (width x height) "
              "accepted; larger ones are rejected before they are decoded", minimum=1,
              maximum=2**31 - 1),
    ParamSpec("frame_budget_ms", 0.0, "Frame time to hold, in ms (0 = off): the node serves the most "
              "accurate setting whose measured frame time holds it (seg: the ISR setting; depth: the "
              "input size)", minimum=0.0, maximum=600000.0),
    ParamSpec("publish_colored", True, "Publish the colour view (rgb8) besides the data image"),
    ParamSpec("diagnostics_period", 1.0, "Seconds between /diagnostics messages",
              read_only=True, minimum=0.1, maximum=60.0),
    ParamSpec("log_period", 10.0, "Seconds between the log lines summarising frame rate, latency "
              "and drops", read_only=True, minimum=1.0, maximum=3600.0),
)

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


def node_parameters(specs: Sequence[ParamSpec], list_specs: Sequence[ParamSpec],
                    qos: Sequence[ParamSpec] = QOS_PARAMETERS) -> tuple[ParamSpec, ...]:
    """All the parameters an inference node declares: its own, its lists, the common ones, QoS."""
    return tuple(specs) + tuple(list_specs) + COMMON_PARAMETERS + tuple(qos)


def optional_size(size: Sequence[int]) -> tuple[int, int] | None:
    """``input_size`` as the API takes it: None when empty."""
    return (int(size[0]), int(size[1])) if len(size) == 2 else None


def predictor_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :class:`~dense_perception.api.DepthEstimator` and ``Segmenter`` that
    come from :data:`COMMON_PARAMETERS` and ``input_size`` (empty strings and sizes mean "default")."""
    return {"checkpoint": values["checkpoint"] or None, "backend": values["backend"],
            "precision": values["precision"], "device": values["device"] or None,
            "input_size": optional_size(values["input_size"]),
            "engine_dir": values["engine_cache"] or None,
            "calibration": [values["calibration"]] if values["calibration"] else None}


@dataclass
class Frame:
    """An input message, when it arrived (``time.monotonic()``), and its decoded RGB once decoded
    (shared by the nodes of one process that handle the same frame)."""

    msg: Image | CompressedImage
    received: float
    rgb: np.ndarray | None = None

    @property
    def stamp(self) -> StampKey:
        return stamp_key(self.msg.header.stamp)


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


class InferenceNode(ClosingNode):
    """Base of the ``depth`` and ``seg`` nodes; see the module docstring.

    A subclass gives its parameter tables and implements :meth:`build` (the predictor),
    :meth:`apply_parameters` (dynamic parameters, called at start and after each accepted change),
    :meth:`process` (one decoded frame, on the worker thread) and optionally
    :meth:`check_parameters` (cross-parameter validation), :meth:`frame_started` and
    :meth:`diagnostic_values`.
    """

    #: ``input_size`` must be a multiple of this (DPT: 32).
    input_multiple = 1

    def __init__(self, node_name: str, specs: Sequence[ParamSpec],
                 list_specs: Sequence[ParamSpec] = (INPUT_SIZE,),
                 qos: Sequence[ParamSpec] = QOS_PARAMETERS, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        forward_python_logging()
        self.warnings = ThrottledWarnings(self)
        self.specs = node_parameters(specs, list_specs, qos)
        declare_parameters(self, self.specs)
        values = current_values(self, self.specs)
        if problem := input_size_problem(values["input_size"], self.input_multiple):
            raise ValueError(f"invalid parameters for node {node_name}: {problem}")
        #: (height, width) of the last decoded image, None before the first
        self.last_image_size: tuple[int, int] | None = None
        self._max_pixels = int(values["max_input_pixels"])
        self.build(values)  # the predictor, which check_parameters may need
        if problem := self._check(values):
            raise ValueError(f"invalid parameters for node {node_name}: {problem}")
        self.apply_parameters(values)
        add_parameter_callbacks(self, self.specs, self._apply, self._check)

        self.input_qos, self.output_qos = qos_from_parameters(self)
        #: input messages the middleware reported lost (best effort drops large images first)
        self.inputs_lost = 0
        events = SubscriptionEventCallbacks(message_lost=self._on_message_lost)
        kind, topic = (CompressedImage, "image/compressed") if values["compressed"] else (Image, "image")
        self.image_sub = self.create_subscription(
            kind, topic, self._on_image, copy.copy(self.input_qos), event_callbacks=events,
            qos_overriding_options=QoSOverridingOptions.with_default_policies())
        self._recent: OrderedDict[StampKey, Frame] = OrderedDict()
        self._claimed_early: OrderedDict[StampKey, float] = OrderedDict()  # claims ahead of their frame
        self._started: deque[StampKey] = deque(maxlen=4 * RECENT_FRAMES)
        self._recent_lock = threading.Lock()
        self.timing = FrameTiming()
        self.worker: LatestFrameWorker[Frame] = LatestFrameWorker(
            self._handle, name=f"{node_name}-inference", on_error=self._on_inference_error,
            on_skipped=self._on_skipped)
        self.diagnostics = FrameDiagnostics(
            self, self.worker, self.timing, self._all_diagnostic_values, values["diagnostics_period"],
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

    def frame_started(self, frame: Frame) -> None:
        """Worker thread: ``frame`` is about to be processed (before decoding)."""

    def frame_skipped(self, frame: Frame, reason: str) -> None:
        """A frame required by :meth:`require_stamp`/:meth:`require` that was not processed."""

    def process(self, rgb: np.ndarray, header: Any) -> None:
        """Infer on one RGB frame and publish; runs on the worker thread."""
        raise NotImplementedError

    def diagnostic_values(self) -> dict[str, Any]:
        """Node-specific key/values for ``/diagnostics``."""
        return {}

    def output_publisher(self, kind: type, topic: str) -> Any:
        """A publisher of an output with the node's output QoS, which ``qos_overrides.<topic>.publisher.*``
        parameters can override (as image_pipeline's nodes allow). rclpy applies overrides to the
        profile it is given, so each publisher gets its own copy."""
        return self.create_publisher(kind, topic, copy.copy(self.output_qos),
                                     qos_overriding_options=QoSOverridingOptions.with_default_policies())

    # -- closing ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop taking frames and publishing; drop waiting frames (see :mod:`.runtime`)."""
        super().close()
        self.worker.stop(timeout=0)

    def wait_closed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the frame in progress; True when the worker has ended."""
        return self.worker.stop(timeout=timeout)

    # -- frames -----------------------------------------------------------------------------------

    def _on_image(self, msg: Image | CompressedImage) -> None:
        """Executor thread: hand the message over, never block (a waiting frame is superseded)."""
        if self.closing:
            return
        frame = Frame(msg, time.monotonic())
        with self._recent_lock:
            self._recent[frame.stamp] = frame
            while len(self._recent) > RECENT_FRAMES:
                self._recent.popitem(last=False)
            claimed = self._claimed_early.pop(frame.stamp, None) is not None
        if claimed:  # another node started on this frame before it reached this one
            self.worker.require(frame)
        else:
            self.worker.submit(frame)

    def require(self, frame: Frame) -> None:
        """Process ``frame`` next, before the newest one (unless it was started already)."""
        with self._recent_lock:
            if frame.stamp in self._started:
                return
        self.worker.require(frame)

    def require_stamp(self, stamp: StampKey) -> bool:
        """Process the frame with this stamp next: a recent one now, one still on its way when it
        arrives (a small claim can overtake a large image). False when it is not held and older than
        the newest frame held (frames come in stamp order: it was dropped, or lost on the way) -- this
        node will not have a result for it."""
        with self._recent_lock:
            frame = self._recent.get(stamp)
            if frame is None:
                if self._recent and stamp < next(reversed(self._recent)):
                    return False
                self._claimed_early[stamp] = time.monotonic()
                while len(self._claimed_early) > RECENT_FRAMES:
                    self._claimed_early.popitem(last=False)
                return True
        self.require(frame)
        return True

    def _handle(self, frame: Frame) -> None:
        """Worker thread: decode, infer and publish one frame; bad input is logged and skipped."""
        with self._recent_lock:
            self._started.append(frame.stamp)
        self.frame_started(frame)
        header = frame.msg.header
        try:
            rgb = frame.rgb if frame.rgb is not None else message_to_rgb(frame.msg, self._max_pixels)
        except ImageFormatError as error:
            self.diagnostics.rejected += 1
            self.frame_skipped(frame, f"bad image: {error}")
            self.warnings.warn("bad_image", (
                f"skipped image {stamp_key(header.stamp)} on {self.image_sub.topic_name}: {error}"))
            return
        frame.rgb = rgb
        self.last_image_size = (int(rgb.shape[0]), int(rgb.shape[1]))
        self.process(rgb, header)
        self.timing.record(time.monotonic() - frame.received)

    def _on_skipped(self, frame: Frame, reason: str) -> None:
        self.frame_skipped(frame, reason)

    def _on_inference_error(self, error: BaseException) -> None:
        if not self.closing:
            self.warnings.warn("inference", f"inference failed: {type(error).__name__}: {error}")

    def _on_message_lost(self, info: Any) -> None:
        self.inputs_lost = int(info.total_count)
        self.warnings.warn("inputs_lost", (
            f"{self.inputs_lost} input messages lost on {self.image_sub.topic_name} before they "
            "arrived (large images between processes: see the README, 'Large images between "
            "processes')"))

    @property
    def predictor(self) -> Any:
        """The node's :class:`~dense_perception.api.DepthEstimator` or ``Segmenter``."""
        raise NotImplementedError

    def _check(self, values: Mapping[str, Any]) -> str | None:
        return frame_budget_problem(values["frame_budget_ms"]) or self.check_parameters(values)

    def _apply(self, values: Mapping[str, Any]) -> None:
        self._max_pixels = int(values["max_input_pixels"])
        self.predictor.set_frame_budget(values["frame_budget_ms"])
        self.apply_parameters(values)

    def _all_diagnostic_values(self) -> dict[str, Any]:
        budget = self.predictor.budget_state
        return {"inputs lost (middleware)": self.inputs_lost, **self.diagnostic_values(),
                **(budget.describe() if budget is not None else {"frame budget": "off"})}
