"""The ``perception`` executable: the ``depth``, ``seg`` and ``cloud`` nodes in one process.

Each node keeps its own name, parameters and topics (``ros2 param set /seg isr_ratio 2`` works as
with separate processes; RViz still sees every topic). What changes is the path to the cloud: the
depth and labels of a frame go to :meth:`CloudNode.build_and_publish` as arrays, in memory, with
no serialisation round trip, and the cloud node's own topic subscriptions are removed.

    perception [--depth true|false] [--seg true|false] [--cloud true|false] [--ros-args ...]

Pairing: depth tells the seg node which frame it starts on, and the seg node segments that frame
first (before the newest one), so both results exist for every depth frame even though the nodes
run at different rates. The depth and labels of that frame meet in a
:class:`~dense_perception.pipeline.pairing.FramePairing` (the one the cloud node uses between
processes) and become one cloud; when the seg node cannot segment the frame (it failed, or a newer
depth frame came first) the cloud goes out without labels, counted with the reason on the cloud
node's ``/diagnostics``. The cloud needs metres: with a MiDaS network, set
``depth_scale``/``depth_shift`` on ``depth`` (the node says so once). With ``depth`` off, ``cloud``
runs on its topics as the standalone node does.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from rclpy.node import Node
from rclpy.utilities import remove_ros_args

from ..pipeline.cloud import CameraModel
from ..pipeline.pairing import PairedFrame
from .cloud_node import LABELS, CloudNode, make_pairing
from .depth_node import DepthFrame, DepthNode
from .inference_node import Frame
from .runtime import run_nodes
from .seg_node import SegFrame, SegNode
from .sync import stamp_key

#: How often depth frames waiting for their labels are checked for an expired wait.
_SYNC_POLL_S = 0.02


class InMemoryCloud:
    """Feeds a CloudNode from DepthNode (and SegNode) results in memory; see the module docstring.

    The ``on_*`` methods run on the inference nodes' worker threads; the pairing is thread-safe.
    """

    def __init__(self, cloud: CloudNode, depth: DepthNode, seg: SegNode | None) -> None:
        self.cloud = cloud
        self.seg = seg
        self._use_labels = seg is not None and cloud.get_parameter("use_labels").value
        self._use_color = cloud.get_parameter("use_color").value
        values = {name: cloud.get_parameter(name).value for name in ("sync_timeout", "sync_queue_size")}
        # A frame whose labels are pending is released by them, or by the seg node giving up on it.
        self.pairing = cloud.pairing = make_pairing([LABELS], values)
        depth.listeners.add(self.on_depth)
        if self._use_labels:
            depth.started_listeners.add(self.on_depth_started)
            seg.listeners.add(self.on_labels)
            seg.skipped_listeners.add(self.on_labels_skipped)
            self._timer = cloud.create_timer(_SYNC_POLL_S, self.flush_expired)

    def on_depth_started(self, frame: Frame) -> None:
        """Depth starts on ``frame``: keep its labels, and have the seg node segment it first."""
        self.pairing.claim(frame.stamp)
        self.seg.require(frame)

    def on_depth(self, frame: DepthFrame) -> None:
        """A depth frame: publish it with its labels, or let it wait for them."""
        if not frame.result.is_metric:
            self.cloud.warnings.once("relative_depth", (
                "no point cloud: the depth network gives relative inverse depth (MiDaS), which has no "
                "unit; set depth_scale/depth_shift on the depth node (a per-scene fit) or use network "
                "dpt_hybrid_nyu (indoor) or dpt_hybrid_kitti (driving) for metres"))
            return
        if frame.camera_info is None:
            self.cloud.warnings.warn("camera_info", "no cloud: no usable camera_info received yet")
            return
        expected = [LABELS] if self._use_labels else []
        self._publish_all(self.pairing.add_depth(stamp_key(frame.header.stamp), frame, expected))

    def on_labels(self, frame: SegFrame) -> None:
        """Labels of a frame: complete the depth frame waiting for them, or keep them for it."""
        self._publish_all(self.pairing.add(LABELS, stamp_key(frame.header.stamp), frame.result.labels))

    def on_labels_skipped(self, skipped: tuple[Frame, str]) -> None:
        """The seg node will not segment a frame: its depth frame goes without labels."""
        frame, reason = skipped
        self._publish_all(self.pairing.give_up(LABELS, frame.stamp, f"not segmented: {reason}"))

    def flush_expired(self) -> None:
        """Timer: depth frames that waited long enough for their labels go without them."""
        self._publish_all(self.pairing.expire())

    def _publish_all(self, frames: list[PairedFrame]) -> None:
        for frame in frames:
            self.cloud.publish_paired(frame, self._build)

    def _build(self, paired: PairedFrame) -> None:
        frame: DepthFrame = paired.depth
        self.cloud.build_and_publish(
            frame.result.depth, CameraModel.from_camera_info(frame.camera_info), frame.header,
            rgb=frame.rgb if self._use_color else None, labels=paired.items.get(LABELS))


class Perception:
    """The chosen nodes, wired together; ``nodes`` go into one executor."""

    def __init__(self, depth: bool = True, seg: bool = True, cloud: bool = True,
                 **node_kwargs: Any) -> None:
        self.depth = DepthNode(**node_kwargs) if depth else None
        # With depth in this process, seg follows its frames in memory, not through the topic.
        self.seg = SegNode(follow_topic=not depth, **node_kwargs) if seg else None
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
    """Entry point of the ``perception`` executable; exits 0 on Ctrl-C or SIGTERM
    (:func:`~dense_perception.ros.runtime.run_nodes`)."""
    import sys

    argv = sys.argv if args is None else args
    options = parse_options(remove_ros_args(args=list(argv))[1:])
    return run_nodes(lambda: Perception(options.depth, options.seg, options.cloud).nodes, argv,
                     threads=2)


if __name__ == "__main__":
    raise SystemExit(main())
