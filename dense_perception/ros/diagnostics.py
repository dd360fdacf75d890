"""Frame-rate, latency and drop figures of the inference nodes, on ``/diagnostics`` and in the log.

* :class:`FrameTiming` — latency and frame rate over the last frames (thread-safe).
* :class:`StatusPublisher` — publishes one node's DiagnosticStatus on ``/diagnostics``
  (diagnostic_msgs/DiagnosticArray) periodically, from a function of the node's values.
* :class:`FrameDiagnostics` — that status for an inference node, from a
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


def status_message(node: Node, part: str, level: int, message: str, values: Mapping[str, Any],
                   hardware_id: str = "") -> DiagnosticStatus:
    """A DiagnosticStatus named ``<node>: <part>`` with ``values`` as strings."""
    return DiagnosticStatus(
        level=level, name=f"{node.get_fully_qualified_name()}: {part}", message=message,
        hardware_id=hardware_id, values=[KeyValue(key=key, value=str(value)) for key, value in values.items()])


class StatusPublisher:
    """Publishes ``status()`` on ``/diagnostics`` every ``period_s`` seconds (nothing once the node
    closes: see :class:`~dense_perception.ros.runtime.ClosingNode`)."""

    def __init__(self, node: Node, status: Callable[[], DiagnosticStatus], period_s: float) -> None:
        self._node, self._status = node, status
        self.publisher = node.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self._timer = node.create_timer(period_s, self.publish)
        #: the last status published
        self.last: DiagnosticStatus | None = None

    def publish(self) -> None:
        status = self._status()
        array = DiagnosticArray(status=[status])
        array.header.stamp = self._node.get_clock().now().to_msg()
        publish = getattr(self._node, "publish", None)
        if publish is not None:
            publish(self.publisher, array)
        else:
            self.publisher.publish(array)
        self.last = status


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
        self._publisher = StatusPublisher(node, self._status_and_log, period_s)

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
        return status_message(self._node, "inference", level,
                              self.summary_line(fps, mean_latency, max_latency), values, self._hardware_id)

    def summary_line(self, fps: float, mean_latency: float, max_latency: float) -> str:
        worker = self._worker
        return (f"{fps:.1f} fps, latency {1e3 * mean_latency:.0f} ms mean / "
                f"{1e3 * max_latency:.0f} ms max; {worker.dropped} dropped, {self.rejected} "
                f"rejected, {worker.failed} failed of {worker.submitted} received")

    def publish(self) -> None:
        """Publish the status now (the timer does it every period)."""
        self._publisher.publish()

    def _status_and_log(self) -> DiagnosticStatus:
        """The status; also the summary line in the log at most once per ``log_period_s``."""
        status = self.status()
        now = time.monotonic()
        if (now - self._last_log >= self._log_period_s and self._worker.submitted
                and not getattr(self._node, "closing", False)):
            self._last_log = now
            self._node.get_logger().info(status.message)
        return status
