"""The ``cloud`` node: depth (+ colour, + labels) of one frame → a semantic PointCloud2.

Subscribes (relative names, remappable):
  ``depth/image`` (32FC1 metres, or 16UC1 millimetres), ``depth/camera_info``,
  ``image`` (colour, any encoding :mod:`dense_perception.io.images` reads; if ``use_color``),
  ``seg/labels`` (mono8/8UC1 or 16UC1 class ids; if ``use_labels``),
  ``depth/frame_started`` (the depth node's claims: which frames to keep colour and labels of).
Publishes ``points`` (sensor_msgs/PointCloud2: x y z float32, rgb packed float32, label uint16) with
the depth frame's header, i.e. in its camera optical frame, and ``/diagnostics`` (clouds published,
and those without colour or labels counted by reason).

Colour and labels are paired with the depth frame by exact header stamp
(:class:`~dense_perception.pipeline.pairing.FramePairing`, the one pairing of the package). A frame
waits for them (only for streams that have a publisher) at least ``sync_timeout`` seconds -- longer
when they have been arriving late -- then goes out without them, or is dropped when
``publish_incomplete`` is false. camera_info with the same stamp is used when there is one, else the
latest good one; each is checked when it arrives (a bad one is rejected with the reason); one of
another size than the depth image is rescaled. Distortion is ignored: the depth image is taken as
rectified. Relative inverse depth (``depth/relative_inverse``) is never taken as metres: when only
that is published, the node says once why there is no cloud.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.subscription import Subscription
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header

from ..io.images import ImageFormatError, image_array, image_to_rgb
from ..pipeline.cloud import CameraModel, build_cloud
from ..pipeline.pairing import FramePairing, PairedFrame
from .diagnostics import StatusPublisher, status_message
from .messages import copy_header, to_pointcloud2
from .params import ParamSpec, add_parameter_callbacks, declare_parameters
from .qos import qos_from_parameters, qos_parameters
from .runtime import ClosingNode, ThrottledWarnings, run_node
from .sync import StampKey, StampMatcher, stamp_key

CAMERA_INFO, COLOR, LABELS = "camera_info", "color", "labels"
#: Topics of the depth node: metres, relative inverse depth, its claims.
DEPTH_TOPIC, RELATIVE_TOPIC, FRAME_STARTED_TOPIC = "depth/image", "depth/relative_inverse", "depth/frame_started"
#: How often waiting frames are re-examined for an expired wait, and the relative-depth check made.
_SYNC_POLL_S = 0.02

CLOUD_PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("cloud_stride", 1, "Use every n-th row and column of the depth image (1 = all)",
              minimum=1, maximum=64),
    ParamSpec("min_depth", 0.0, "Drop points closer than this, in metres", minimum=0.0,
              maximum=10000.0),
    ParamSpec("max_depth", 100.0, "Drop points farther than this, in metres (above min_depth)",
              minimum=0.0, maximum=10000.0),
    ParamSpec("organized", False, "Publish an organised cloud (image layout, NaN at invalid "
              "pixels, is_dense false) instead of the valid points only"),
    ParamSpec("use_color", True, "Colour the points from the 'image' topic", read_only=True),
    ParamSpec("use_labels", True, "Label the points from the 'seg/labels' topic", read_only=True),
    ParamSpec("sync_timeout", 1.0, "Shortest time a depth frame waits for colour/labels with its "
              "stamp (the wait grows to twice their recent lateness, up to 5 s)",
              minimum=0.0, maximum=10.0),
    ParamSpec("publish_incomplete", True, "After sync_timeout, publish without the missing colour/"
              "labels (true) or drop the frame (false)"),
    ParamSpec("sync_queue_size", 32, "Messages kept per input at most while pairing stamps (those "
              "of frames the depth node started on first)", read_only=True, minimum=4, maximum=256),
    ParamSpec("diagnostics_period", 1.0, "Seconds between /diagnostics messages",
              read_only=True, minimum=0.1, maximum=60.0),
) + qos_parameters(10, "10: every depth image, claim, colour image and labels message is paired, "
                   "so none may be lost while the node is busy")


def check_depth_range(values: Mapping[str, Any]) -> str | None:
    """min_depth must stay below max_depth."""
    if values["min_depth"] >= values["max_depth"]:
        return (f"min_depth ({values['min_depth']}) must be below max_depth "
                f"({values['max_depth']})")
    return None


@dataclass(frozen=True)
class CloudSettings:
    """The dynamic parameters, read once per frame."""

    stride: int
    min_depth: float
    max_depth: float
    organized: bool
    sync_timeout: float
    publish_incomplete: bool

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> CloudSettings:
        return cls(stride=values["cloud_stride"], min_depth=values["min_depth"],
                   max_depth=values["max_depth"], organized=values["organized"],
                   sync_timeout=values["sync_timeout"],
                   publish_incomplete=values["publish_incomplete"])


@dataclass
class CloudStats:
    """Frame counters, for diagnostics and tests."""

    published: int = 0
    rejected: int = 0  # bad input (encoding, size, intrinsics)
    dropped: int = 0  # incomplete with publish_incomplete false
    incomplete: int = 0  # published without colour or labels it waited for


class CloudNode(ClosingNode):
    """Depth + camera_info (+ colour, + labels) → ``points``; see the module docstring."""

    def __init__(self, node_name: str = "cloud", subscribe: bool = True, **kwargs: Any) -> None:
        """``subscribe=False``: no topic inputs -- the one-process ``perception`` executable hands
        decoded arrays to :meth:`build_and_publish` (and pairs them with its own
        :class:`FramePairing`) instead."""
        super().__init__(node_name, **kwargs)
        values = declare_parameters(self, CLOUD_PARAMETERS, check_depth_range)
        self._settings = CloudSettings.from_values(values)
        #: pairs depth with colour and labels (set by the in-process composition when not subscribing)
        self.pairing: FramePairing | None = None
        add_parameter_callbacks(self, CLOUD_PARAMETERS, self._apply_parameters, check_depth_range)

        self.stats = CloudStats()
        self.warnings = ThrottledWarnings(self)
        input_qos, output_qos = qos_from_parameters(self)
        overrides = QoSOverridingOptions.with_default_policies()
        self._publisher = self.create_publisher(PointCloud2, "points", copy.copy(output_qos),
                                                qos_overriding_options=overrides)
        self.diagnostics = StatusPublisher(self, self.status, values["diagnostics_period"])
        self._optional_subs: dict[str, Subscription] = {}
        if not subscribe:
            return
        streams = [stream for stream, wanted in ((COLOR, values["use_color"]),
                                                 (LABELS, values["use_labels"])) if wanted]
        self.pairing = make_pairing(streams, values)
        self._infos = StampMatcher([CAMERA_INFO], capacity=values["sync_queue_size"])
        self._before_camera_info: Image | None = None  # the newest depth frame before any camera_info
        self.camera_infos_rejected = 0

        def subscribe_to(kind: type, topic: str, callback: Callable[[Any], None]) -> Subscription:
            return self.create_subscription(kind, topic, callback, copy.copy(input_qos),
                                            qos_overriding_options=overrides)

        self._depth_sub = subscribe_to(Image, DEPTH_TOPIC, self._on_depth)
        self._info_sub = subscribe_to(CameraInfo, "depth/camera_info", self._on_camera_info)
        self._claims_sub = subscribe_to(Header, FRAME_STARTED_TOPIC, self._on_claim)
        if COLOR in streams:
            self._optional_subs[COLOR] = subscribe_to(Image, "image", self._keeper(COLOR))
        if LABELS in streams:
            self._optional_subs[LABELS] = subscribe_to(Image, "seg/labels", self._keeper(LABELS))
        self._timer = self.create_timer(_SYNC_POLL_S, self._on_timer)

    @property
    def settings(self) -> CloudSettings:
        return self._settings

    def build_and_publish(self, depth_m: np.ndarray, camera: CameraModel, header: Any,
                          rgb: np.ndarray | None = None, labels: np.ndarray | None = None) -> int:
        """Back-project one frame (arrays already decoded) and publish it; returns the point count.

        The in-process ``perception`` executable calls this directly, skipping serialisation.
        """
        settings = self._settings
        camera = camera.for_image(depth_m.shape[1], depth_m.shape[0])
        cloud = build_cloud(depth_m, camera.K, rgb=rgb, labels=labels, stride=settings.stride,
                            min_depth=settings.min_depth, max_depth=settings.max_depth,
                            organized=settings.organized)
        if self.publish(self._publisher, to_pointcloud2(cloud, copy_header(header))):
            self.stats.published += 1
        return int(cloud.size)

    def publish_paired(self, frame: PairedFrame, build: Callable[[PairedFrame], None]) -> None:
        """Publish a released frame through ``build`` (which calls :meth:`build_and_publish`), or drop
        it when something is missing and ``publish_incomplete`` is false; bad input is counted."""
        if frame.missing:
            if not self._settings.publish_incomplete:
                self.stats.dropped += 1
                self.warnings.warn("incomplete", (
                    f"dropped depth frame {frame.stamp}: {describe_missing(frame)} "
                    "(publish_incomplete is false)"))
                return
            self.stats.incomplete += 1
            self.warnings.warn("incomplete", f"cloud {frame.stamp} published {describe_missing(frame)}")
        try:
            build(frame)
        except (ImageFormatError, ValueError) as error:
            self.stats.rejected += 1
            self.warnings.warn("bad_input", f"skipped depth frame {frame.stamp}: {error}")

    def status(self) -> DiagnosticStatus:
        """``/diagnostics``: clouds published, incomplete (by reason), rejected, dropped."""
        values: dict[str, Any] = {"clouds published": self.stats.published,
                                  "clouds without colour or labels": self.stats.incomplete,
                                  "frames dropped (incomplete)": self.stats.dropped,
                                  "frames rejected (bad input)": self.stats.rejected}
        if self.pairing is not None:
            values.update(self.pairing.stats.summary())
            values["pairing wait (s)"] = f"{self.pairing.current_timeout():.2f}"
        if hasattr(self, "camera_infos_rejected"):
            values["camera_info rejected"] = self.camera_infos_rejected
        level = DiagnosticStatus.WARN if self.stats.incomplete or self.stats.rejected else DiagnosticStatus.OK
        message = (f"{self.stats.published} clouds, {self.stats.incomplete} without colour or labels, "
                   f"{self.stats.rejected} rejected")
        return status_message(self, "cloud", level, message, values)

    # -- message handling (topics) ------------------------------------------------------------------

    def _keeper(self, stream: str) -> Callable[[Any], None]:
        """The subscription callback of an optional stream: pair it, publish what it completes."""

        def keep(msg: Any) -> None:
            for frame in self.pairing.add(stream, stamp_key(msg.header.stamp), msg):
                self._publish_from_messages(frame)
        return keep

    def _on_claim(self, header: Header) -> None:
        self.pairing.claim(stamp_key(header.stamp))

    def _on_camera_info(self, msg: CameraInfo) -> None:
        """Keep a camera_info that describes a camera; reject others with the reason."""
        try:
            CameraModel.from_camera_info(msg)
        except ValueError as error:
            self.camera_infos_rejected += 1
            self.warnings.warn("camera_info_rejected", (
                f"rejected CameraInfo {stamp_key(msg.header.stamp)} on {self._info_sub.topic_name}: "
                f"{error}; the last good one stays in use"))
            return
        self._infos.add(CAMERA_INFO, stamp_key(msg.header.stamp), msg)
        held, self._before_camera_info = self._before_camera_info, None
        if held is not None:
            self._on_depth(held)

    def _on_depth(self, msg: Image) -> None:
        if self._infos.latest(CAMERA_INFO) is None:  # hold the newest frame until intrinsics come
            self._before_camera_info = msg
            self.warnings.warn(CAMERA_INFO, (
                f"waiting for camera_info on {self._info_sub.topic_name}: no CameraInfo received yet, "
                "so depth frames cannot be back-projected"))
            return
        stamp = stamp_key(msg.header.stamp)
        expected = [stream for stream, sub in self._optional_subs.items()
                    if sub.get_publisher_count() > 0]
        for frame in self.pairing.add_depth(stamp, msg, expected):
            self._publish_from_messages(frame)

    def _on_timer(self) -> None:
        for frame in self.pairing.expire():
            self._publish_from_messages(frame)
        if (self._depth_sub.get_publisher_count() == 0
                and self.count_publishers(self._resolved(RELATIVE_TOPIC)) > 0):
            self.warnings.once("relative_depth", (
                f"no point cloud: the depth node publishes relative inverse depth on "
                f"{self._resolved(RELATIVE_TOPIC)} (a MiDaS network), which has no unit; set its "
                "depth_scale/depth_shift parameters (a per-scene fit) or use network dpt_hybrid_nyu "
                "(indoor) or dpt_hybrid_kitti (driving) for metres on depth/image"))

    def _resolved(self, topic: str) -> str:
        return self.resolve_topic_name(topic)

    def _apply_parameters(self, values: Mapping[str, Any]) -> None:
        self._settings = CloudSettings.from_values(values)
        if self.pairing is not None:
            self.pairing.timeout_s = self._settings.sync_timeout

    def _camera_for(self, stamp: StampKey) -> Any:
        info = self._infos.get(CAMERA_INFO, stamp)
        return info if info is not None else self._infos.latest(CAMERA_INFO)

    def _publish_from_messages(self, frame: PairedFrame) -> None:
        info = self._camera_for(frame.stamp)
        if info is None:
            self.stats.dropped += 1
            self.warnings.warn(CAMERA_INFO, (
                f"no cloud for depth frame {frame.stamp}: no usable CameraInfo received yet on "
                f"{self._info_sub.topic_name}"))
            return

        def build(paired: PairedFrame) -> None:
            depth_msg = paired.depth
            depth_m = depth_in_metres(depth_msg)
            camera = CameraModel.from_camera_info(info)
            shape = depth_m.shape
            rgb = self._decoded(paired, COLOR, lambda msg: aligned(image_to_rgb(msg), shape, False))
            labels = self._decoded(paired, LABELS, lambda msg: aligned(labels_array(msg), shape, True))
            if not np.isfinite(depth_m).any():
                self.warnings.warn("no_depth", f"depth frame {paired.stamp} has no finite depth values")
            self.build_and_publish(depth_m, camera, depth_msg.header, rgb=rgb, labels=labels)

        self.publish_paired(frame, build)

    def _decoded(self, frame: PairedFrame, stream: str, decode: Callable[[Any], np.ndarray]
                 ) -> np.ndarray | None:
        """The decoded ``stream`` item of the frame; None (with a warning) if absent or unusable."""
        msg = frame.items.get(stream)
        if msg is None:
            return None
        try:
            return decode(msg)
        except (ImageFormatError, ValueError) as error:
            self.warnings.warn(f"bad_{stream}", f"publishing frame {frame.stamp} without {stream}: {error}")
            return None


def make_pairing(streams: list[str], values: Mapping[str, Any]) -> FramePairing:
    """The cloud's pairing of depth with ``streams``, sized by the node's parameters."""
    return FramePairing(streams, timeout_s=values["sync_timeout"], max_items=values["sync_queue_size"])


def describe_missing(frame: PairedFrame) -> str:
    """``without labels (reason), colour (reason)`` for a log line."""
    return "without " + ", ".join(f"{stream} ({reason})" for stream, reason in frame.missing.items())


def depth_in_metres(msg: Any) -> np.ndarray:
    """[H, W] float32 metres from a 32FC1 (metres) or 16UC1 (millimetres, 0 = none) Image."""
    if msg.encoding == "32FC1":
        return image_array(msg)
    if msg.encoding == "16UC1":
        millimetres = image_array(msg)
        return np.where(millimetres == 0, np.nan, millimetres * np.float32(1e-3)).astype(np.float32)
    raise ImageFormatError(
        f"depth must be 32FC1 (metres) or 16UC1 (millimetres), got {msg.encoding!r}")


def labels_array(msg: Any) -> np.ndarray:
    """[H, W] uint8/uint16 class ids from a mono8/8UC1 or 16UC1 Image."""
    if msg.encoding not in ("mono8", "8UC1", "16UC1"):
        raise ImageFormatError(f"labels must be mono8, 8UC1 or 16UC1, got {msg.encoding!r}")
    return image_array(msg)


def aligned(array: np.ndarray, shape: tuple[int, int], nearest: bool) -> np.ndarray:
    """``array`` resized to ``shape`` (H, W) if it differs (nearest for labels)."""
    if array.shape[:2] == shape:
        return array
    import cv2

    height, width = shape
    if nearest:
        interpolation = cv2.INTER_NEAREST
    elif width < array.shape[1]:
        interpolation = cv2.INTER_AREA
    else:
        interpolation = cv2.INTER_LINEAR
    return cv2.resize(array, (width, height), interpolation=interpolation)


def main(args: list[str] | None = None) -> int:
    """Entry point of the ``cloud`` executable."""
    return run_node(CloudNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
