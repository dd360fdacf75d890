"""What the ``depth`` and ``seg`` nodes share: frame plumbing, latest-frame inference, diagnostics.

* :class:`FrameTiming` — latency and frame rate over the last frames (thread-safe).
* :class:`FrameDiagnostics` — publishes ``/diagnostics`` (diagnostic_msgs/DiagnosticArray) from a
  :class:`~dense_perception.ros.sync.LatestFrameWorker`'s counters and the timing, and a throttled
  one-line summary in the log.
* :class:`InferenceNode` — the base of both nodes: declares the common parameters (model source,
  QoS, colour output, diagnostics) from :mod:`.params` tables, subscribes ``image`` (or
  ``image/compressed``) with the latest-frame QoS, decodes on a worker thread (never on the
  executor thread) and hands the RGB frame to the subclass's :meth:`InferenceNode.process`.

The subclass builds its predictor from the API (:mod:`dense_perception.api`) and publishes; all
conversions are the ROS-free helpers of :mod:`dense_perception.io` and
:mod:`dense_perception.pipeline`.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterType
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage, Image

from ..api import BACKENDS
from ..io.images import ImageFormatError, message_to_rgb
from .params import ParamSpec, current_values, declare_parameters, make_validator
from .qos import QOS_PARAMETERS, qos_from_parameters
from .runtime import ThrottledWarnings
from .sync import LatestFrameWorker, stamp_key

#: Frames kept for the latency and frame-rate figures.
TIMING_WINDOW = 100
#: The standard aggregated diagnostics topic (absolute: one per system, like diagnostic_updater).
DIAGNOSTICS_TOPIC = "/diagnostics"

#: Parameters both inference nodes declare (``network`` differs per node and is added by each).
COMMON_PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("checkpoint", "", "Checkpoint file of the network; empty = untrained random weights "
              "(outputs are meaningless; the node logs a warning)", read_only=True),
    ParamSpec("backend", "auto", "Inference backend: auto, torch, onnxruntime or tensorrt",
              read_only=True, choices=BACKENDS),
    ParamSpec("precision", "fp32", "Inference precision: fp32, fp16 or bf16 (CUDA only)",
              read_only=True, choices=("fp32", "fp16", "bf16")),
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

#: ``input_size`` (both nodes): an integer list, declared by :func:`declare_integer_lists`.
INPUT_SIZE = ParamSpec(
    "input_size", [], "Network input [height, width]; empty = the network's official resize of "
    "each image (keep aspect). A fixed size suits fixed-shape engines (ONNX Runtime, TensorRT)",
    read_only=True, param_type=ParameterType.PARAMETER_INTEGER_ARRAY)


def declare_integer_lists(node: Node, specs: Sequence[ParamSpec]) -> None:
    """Declare integer-list parameters whose default may be empty.

    rclpy types an empty default list as a byte array, after which ``[16, 8, 2, 1]`` is rejected
    as the wrong type; an empty list in a YAML file arrives with no type at all. So the parameter is
    declared by type (writable), set to the default when nothing (or ``[]``) overrides it, and only
    then made read-only where the spec says so.
    """
    for spec in specs:
        descriptor = spec.descriptor()
        writable = spec.descriptor()
        writable.read_only = False
        declared = node.declare_parameter(spec.name, Parameter.Type.INTEGER_ARRAY, writable)
        if declared.type_ == Parameter.Type.NOT_SET:
            [result] = node.set_parameters([Parameter(spec.name, Parameter.Type.INTEGER_ARRAY,
                                                      list(spec.default))])
            if not result.successful:
                raise ValueError(f"cannot initialise parameter {spec.name}: {result.reason}")
        if descriptor.read_only:
            node.set_descriptor(spec.name, descriptor)


def input_size_problem(size: Sequence[int], multiple: int = 1) -> str | None:
    """Why ``input_size`` is unusable (not empty nor two positive multiples of ``multiple``)."""
    if len(size) == 0:
        return None
    if len(size) != 2 or any(v < multiple or v % multiple for v in size):
        kind = f"positive multiples of {multiple}" if multiple > 1 else "positive integers"
        return f"input_size must be empty or [height, width] with {kind}, got {list(size)}"
    return None


def optional_size(size: Sequence[int]) -> tuple[int, int] | None:
    """``input_size`` as the API takes it: None when empty."""
    return (int(size[0]), int(size[1])) if len(size) == 2 else None


class FrameTiming:
    """Latency (frame received → outputs published) and output frame rate over recent frames."""

    def __init__(self, window: int = TIMING_WINDOW) -> None:
        self._lock = threading.Lock()
        self._done: deque[tuple[float, float]] = deque(maxlen=window)  # (finished at, latency)

    def record(self, latency_s: float, now: float | None = None) -> None:
        with self._lock:
            self._done.append((time.monotonic() if now is None else now, latency_s))

    def summary(self) -> tuple[float, float, float]:
        """(frames per second, mean latency s, max latency s); zeros before two frames."""
        with self._lock:
            done = list(self._done)
        if not done:
            return 0.0, 0.0, 0.0
        latencies = [latency for _, latency in done]
        span = done[-1][0] - done[0][0]
        fps = (len(done) - 1) / span if len(done) > 1 and span > 0 else 0.0
        return fps, float(np.mean(latencies)), max(latencies)


class FrameDiagnostics:
    """``/diagnostics`` and a throttled log line for one node's latest-frame worker."""

    def __init__(self, node: Node, worker: LatestFrameWorker, timing: FrameTiming,
                 extra: Callable[[], Mapping[str, Any]], period_s: float, log_period_s: float,
                 hardware_id: str = "") -> None:
        self._node, self._worker, self._timing, self._extra = node, worker, timing, extra
        self._hardware_id = hardware_id
        self._log_period_s = log_period_s
        self._last_log = time.monotonic()
        self._last_failed = 0
        #: problems counted by the node itself (bad input), beside the worker's counters
        self.rejected = 0
        self.publisher = node.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self._timer = node.create_timer(period_s, self.publish)

    def status(self) -> DiagnosticStatus:
        """The node's DiagnosticStatus now: counters, timing and the node's own values."""
        worker = self._worker
        fps, mean_latency, max_latency = self._timing.summary()
        values: dict[str, Any] = {
            "frames received": worker.submitted, "frames processed": worker.processed,
            "frames dropped (superseded)": worker.dropped, "frames rejected (bad input)":
            self.rejected, "frames failed (inference error)": worker.failed,
            "frame rate (Hz)": f"{fps:.2f}", "latency mean (ms)": f"{1e3 * mean_latency:.1f}",
            "latency max (ms)": f"{1e3 * max_latency:.1f}", **self._extra()}
        failing = worker.failed > self._last_failed
        self._last_failed = worker.failed
        level = DiagnosticStatus.WARN if failing or values.get("untrained") else DiagnosticStatus.OK
        message = self.summary_line(fps, mean_latency, max_latency)
        return DiagnosticStatus(
            level=level, name=f"{self._node.get_fully_qualified_name()}: inference",
            message=message, hardware_id=self._hardware_id,
            values=[KeyValue(key=key, value=str(value)) for key, value in values.items()])

    def summary_line(self, fps: float, mean_latency: float, max_latency: float) -> str:
        worker = self._worker
        return (f"{fps:.1f} fps, latency {1e3 * mean_latency:.0f} ms mean / "
                f"{1e3 * max_latency:.0f} ms max; {worker.dropped} dropped, {self.rejected} "
                f"rejected, {worker.failed} failed of {worker.submitted} received")

    def publish(self) -> None:
        """Publish the status; log the summary line at most once per ``log_period_s``."""
        status = self.status()
        array = DiagnosticArray(status=[status])
        array.header.stamp = self._node.get_clock().now().to_msg()
        self.publisher.publish(array)
        now = time.monotonic()
        if now - self._last_log >= self._log_period_s and self._worker.submitted:
            self._last_log = now
            self._node.get_logger().info(status.message)


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
        declare_integer_lists(self, list_specs)
        declare_parameters(self, tuple(specs) + COMMON_PARAMETERS)
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
