"""The ``perception`` executable: the ``depth``, ``seg`` and ``cloud`` nodes in one process.

Each node keeps its own name, parameters and topics (``ros2 param set /seg isr_ratio 2`` works as
with separate processes; RViz still sees every topic). What changes is the path to the cloud: the
depth and labels of a frame go to :meth:`CloudNode.build_and_publish` as arrays, in memory, with
no serialisation round trip, and the cloud node's own topic subscriptions are removed.

    perception [--depth true|false] [--seg true|false] [--cloud true|false] [--ros-args ...]

Pairing: both inference nodes process frames in arrival order, each on its own latest-frame
worker, so they may skip different frames. A depth frame is published with the labels of the same
stamp; it waits for them at most the cloud node's ``sync_timeout``, and goes without them (or is
dropped, ``publish_incomplete:=false``) once that passes or once newer labels show that the seg
node skipped its frame. Without ``seg`` (or with ``use_labels:=false``) nothing waits. The cloud
needs metres: with a MiDaS network, set ``depth_scale``/``depth_shift`` on ``depth``. With ``depth``
off, ``cloud`` runs on its topics as the standalone node does.
"""
from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.utilities import remove_ros_args

from ..pipeline.cloud import CameraModel
from .cloud_node import CloudNode
from .depth_node import DepthFrame, DepthNode
from .seg_node import SegFrame, SegNode
from .sync import StampKey, StampMatcher, stamp_key

#: How often a depth frame waiting for its labels is checked against ``sync_timeout``.
_SYNC_POLL_S = 0.02
LABELS = "labels"


@dataclass
class _Pending:
    frame: DepthFrame
    stamp: StampKey
    since: float  # time.monotonic() when it started waiting


class InMemoryCloud:
    """Feeds a CloudNode from DepthNode (and SegNode) results in memory; see the module docstring.

    The ``on_*`` methods run on the inference nodes' worker threads; one lock orders them.
    """

    def __init__(self, cloud: CloudNode, depth: DepthNode, seg: SegNode | None) -> None:
        self.cloud = cloud
        self._use_labels = seg is not None and cloud.get_parameter("use_labels").value
        self._use_color = cloud.get_parameter("use_color").value
        self._lock = threading.Lock()
        self._labels = StampMatcher([LABELS], capacity=cloud.get_parameter(
            "sync_queue_size").value)
        self._pending: _Pending | None = None
        depth.listeners.add(self.on_depth)
        if self._use_labels:
            seg.listeners.add(self.on_labels)
            self._timer = cloud.create_timer(_SYNC_POLL_S, self.flush_expired)

    def on_depth(self, frame: DepthFrame) -> None:
        """A depth frame: publish it with its labels, or let it wait for them."""
        if not frame.result.is_metric:
            self.cloud.warnings.warn("relative_depth", (
                "no cloud: depth is relative inverse depth (MiDaS network); set depth_scale and "
                "depth_shift on the depth node to get metres"))
            return
        if frame.camera_info is None:
            self.cloud.warnings.warn("camera_info", "no cloud: no camera_info received yet")
            return
        stamp = stamp_key(frame.header.stamp)
        with self._lock:
            if self._pending is not None:  # a newer depth frame: the old one waited enough
                self._resolve_incomplete()
            labels = self._labels.get(LABELS, stamp)
            newest = self._labels.stamps(LABELS)
            labels_skipped = bool(newest) and max(newest) > stamp
            if labels is not None or not self._use_labels or labels_skipped:
                self._publish(frame, labels)
            else:
                self._pending = _Pending(frame, stamp, time.monotonic())

    def on_labels(self, frame: SegFrame) -> None:
        """Labels of a frame: complete the waiting depth frame, or keep them for it."""
        stamp = stamp_key(frame.header.stamp)
        with self._lock:
            self._labels.add(LABELS, stamp, frame.result.labels)
            pending = self._pending
            if pending is None:
                return
            if pending.stamp == stamp:
                self._pending = None
                self._publish(pending.frame, frame.result.labels)
            elif stamp > pending.stamp:  # the seg node skipped the pending frame
                self._resolve_incomplete()

    def flush_expired(self) -> None:
        """Timer: a depth frame that waited ``sync_timeout`` for its labels goes without them."""
        with self._lock:
            pending = self._pending
            if pending is not None and (time.monotonic() - pending.since
                                        >= self.cloud.settings.sync_timeout):
                self._resolve_incomplete()

    def _resolve_incomplete(self) -> None:
        """Publish the pending frame without labels, or drop it (``publish_incomplete:=false``)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if self.cloud.settings.publish_incomplete:
            self.cloud.stats.incomplete += 1
            self._publish(pending.frame, None)
        else:
            self.cloud.stats.dropped += 1
            self.cloud.warnings.warn("incomplete", (
                f"dropped depth frame {pending.stamp}: no labels with its stamp "
                "(publish_incomplete is false)"))

    def _publish(self, frame: DepthFrame, labels: Any) -> None:
        try:
            self.cloud.build_and_publish(
                frame.result.depth, CameraModel.from_camera_info(frame.camera_info), frame.header,
                rgb=frame.rgb if self._use_color else None, labels=labels)
        except ValueError as error:
            self.cloud.stats.rejected += 1
            self.cloud.warnings.warn("bad_input", f"no cloud for {stamp_key(frame.header.stamp)}: "
                                     f"{error}")


class Perception:
    """The chosen nodes, wired together; ``nodes`` go into one executor."""

    def __init__(self, depth: bool = True, seg: bool = True, cloud: bool = True,
                 **node_kwargs: Any) -> None:
        self.depth = DepthNode(**node_kwargs) if depth else None
        self.seg = SegNode(**node_kwargs) if seg else None
        # With depth in this process the cloud gets arrays in memory, not topics.
        self.cloud = CloudNode(subscribe=not depth, **node_kwargs) if cloud else None
        self.in_memory = (InMemoryCloud(self.cloud, self.depth, self.seg)
                          if self.cloud is not None and self.depth is not None else None)

    @property
    def nodes(self) -> list[Node]:
        return [node for node in (self.depth, self.seg, self.cloud) if node is not None]

    def destroy(self) -> None:
        for node in self.nodes:
            node.destroy_node()


def _flag(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return lowered in ("true", "1", "yes")


def parse_options(argv: Sequence[str]) -> argparse.Namespace:
    """``--depth``, ``--seg``, ``--cloud`` (true/false) from the non-ROS arguments."""
    parser = argparse.ArgumentParser(prog="perception", description=__doc__.splitlines()[0])
    for name in ("depth", "seg", "cloud"):
        parser.add_argument(f"--{name}", type=_flag, default=True, metavar="true|false",
                            help=f"run the {name} node (default true)")
    options = parser.parse_args(list(argv))
    if not (options.depth or options.seg or options.cloud):
        parser.error("nothing to run: depth, seg and cloud are all false")
    return options


def main(args: list[str] | None = None) -> int:
    """Entry point of the ``perception`` executable; exits 0 on Ctrl-C or SIGTERM."""
    import sys

    argv = sys.argv if args is None else args
    options = parse_options(remove_ros_args(args=list(argv))[1:])
    rclpy.init(args=argv)
    perception: Perception | None = None
    executor = MultiThreadedExecutor(num_threads=2)
    try:
        perception = Perception(options.depth, options.seg, options.cloud)
        for node in perception.nodes:
            executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # SIGINT shuts the context down while the executor's threads wait; rclpy then raises
        # RCLError ("context is not valid") instead of ExternalShutdownException. Only re-raise
        # errors that happen while the context is still alive.
        if rclpy.ok():
            raise
    finally:
        executor.shutdown()
        if perception is not None:
            perception.destroy()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
