"""Frame-rate, latency and drop figures of the inference nodes, on ``/diagnostics`` and in the log.

* :class:`FrameTiming` — latency and frame rate over the last frames (thread-safe).
* :class:`FrameDiagnostics` — publishes ``/diagnostics`` (diagnostic_msgs/DiagnosticArray) from a
  :class:`~dense_perception.ros.sync.LatestFrameWorker`'s counters and the timing, and a throttled
  one-line summary in the log.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node

from .sync import LatestFrameWorker

#: Frames kept for the latency and frame-rate figures.
TIMING_WINDOW = 100
#: The standard aggregated diagnostics topic (absolute: one per system, like diagnostic_updater).
DIAGNOSTICS_TOPIC = "/diagnostics"


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
