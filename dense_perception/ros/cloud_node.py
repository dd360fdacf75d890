"""The ``cloud`` node: depth (+ colour, + labels) of one frame → a semantic PointCloud2.

Subscribes (relative names, remappable):
  ``depth/image`` (32FC1 metres, or 16UC1 millimetres), ``depth/camera_info``,
  ``image`` (colour, any encoding :mod:`dense_perception.io.images` reads; if ``use_color``),
  ``seg/labels`` (mono8/8UC1 or 16UC1 class ids; if ``use_labels``).
Publishes ``points`` (sensor_msgs/PointCloud2: x y z float32, rgb packed float32, label uint16) with
the depth frame's header, i.e. in its camera optical frame.

Colour and labels are paired with the depth frame by exact header stamp. A frame waits at most
``sync_timeout`` seconds for them (only for streams that have a publisher), then goes out without
them, or is dropped when ``publish_incomplete`` is false. camera_info with the same stamp is used
when there is one, else the latest; a camera_info of another size than the depth image is rescaled.
Distortion is ignored: the depth image is taken as rectified.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from rclpy.node import Node
from rclpy.subscription import Subscription
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from ..io.images import ImageFormatError, image_array, image_to_rgb
from ..pipeline.cloud import CameraModel, build_cloud
from .messages import copy_header, to_pointcloud2
from .params import ParamSpec, current_values, declare_parameters, make_validator
from .qos import QOS_PARAMETERS, qos_from_parameters
from .runtime import ThrottledWarnings, run_node
from .sync import StampKey, StampMatcher, stamp_key

DEPTH, CAMERA_INFO, COLOR, LABELS = "depth", "camera_info", "color", "labels"
#: How often pending frames are re-examined for an expired ``sync_timeout``.
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
    ParamSpec("sync_timeout", 0.2, "Seconds a depth frame waits for colour/labels with its stamp",
              minimum=0.0, maximum=10.0),
    ParamSpec("publish_incomplete", True, "After sync_timeout, publish without the missing colour/"
              "labels (true) or drop the frame (false)"),
    ParamSpec("sync_queue_size", 10, "Messages kept per input while pairing stamps",
              read_only=True, minimum=1, maximum=100),
) + QOS_PARAMETERS


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
    dropped: int = 0  # superseded by a newer frame, or incomplete with publish_incomplete false
    incomplete: int = 0  # published without colour or labels it waited for


class CloudNode(Node):
    """Depth + camera_info (+ colour, + labels) → ``points``; see the module docstring."""

    def __init__(self, node_name: str = "cloud", subscribe: bool = True, **kwargs: Any) -> None:
        """``subscribe=False``: no topic inputs — the one-process ``perception`` executable hands
        decoded arrays to :meth:`build_and_publish` instead."""
        super().__init__(node_name, **kwargs)
        values = declare_parameters(self, CLOUD_PARAMETERS, check_depth_range)
        self._settings = CloudSettings.from_values(values)
        self.add_on_set_parameters_callback(
            make_validator(self, CLOUD_PARAMETERS, check_depth_range))
        self.add_post_set_parameters_callback(self._apply_parameters)

        self.stats = CloudStats()
        self.warnings = ThrottledWarnings(self)
        input_qos, output_qos = qos_from_parameters(self)
        self._publisher = self.create_publisher(PointCloud2, "points", output_qos)
        self._optional_subs: dict[str, Subscription] = {}
        if not subscribe:
            return
        streams = [DEPTH, CAMERA_INFO]
        self._depth_sub = self.create_subscription(
            Image, "depth/image", self._keeper(DEPTH), input_qos)
        self._info_sub = self.create_subscription(
            CameraInfo, "depth/camera_info", self._keeper(CAMERA_INFO), input_qos)
        if values["use_color"]:
            streams.append(COLOR)
            self._optional_subs[COLOR] = self.create_subscription(
                Image, "image", self._keeper(COLOR), input_qos)
        if values["use_labels"]:
            streams.append(LABELS)
            self._optional_subs[LABELS] = self.create_subscription(
                Image, "seg/labels", self._keeper(LABELS), input_qos)
        self._matcher = StampMatcher(streams, capacity=values["sync_queue_size"])
        self._timer = self.create_timer(_SYNC_POLL_S, self._publish_ready)

    @property
    def settings(self) -> CloudSettings:
        return self._settings

    def build_and_publish(self, depth_m: np.ndarray, camera: CameraModel, header: Any,
                          rgb: np.ndarray | None = None, labels: np.ndarray | None = None) -> int:
        """Back-project one frame (arrays already decoded) and publish it; returns the point count.

        The in-process ``perception`` executable can call this directly, skipping serialisation.
        """
        settings = self._settings
        camera = camera.for_image(depth_m.shape[1], depth_m.shape[0])
        cloud = build_cloud(depth_m, camera.K, rgb=rgb, labels=labels, stride=settings.stride,
                            min_depth=settings.min_depth, max_depth=settings.max_depth,
                            organized=settings.organized)
        self._publisher.publish(to_pointcloud2(cloud, copy_header(header)))
        self.stats.published += 1
        return int(cloud.size)

    # -- message handling -------------------------------------------------------------------------

    def _keeper(self, stream: str) -> Callable[[Any], None]:
        """The subscription callback storing messages of ``stream`` and publishing what is ready."""

        def keep(msg: Any) -> None:
            self._matcher.add(stream, stamp_key(msg.header.stamp), msg)
            self._publish_ready()
        return keep

    def _apply_parameters(self, _parameters: list) -> None:
        self._settings = CloudSettings.from_values(current_values(self, CLOUD_PARAMETERS))

    def _expected_streams(self) -> list[str]:
        """Optional streams worth waiting for: enabled and with at least one publisher."""
        return [stream for stream, sub in self._optional_subs.items()
                if sub.get_publisher_count() > 0]

    def _publish_ready(self) -> None:
        """Publish the newest depth frame that is complete or has waited long enough."""
        pending = sorted(self._matcher.stamps(DEPTH), reverse=True)
        if not pending:
            return
        if self._matcher.latest(CAMERA_INFO) is None:
            self.warnings.warn(CAMERA_INFO, (
                f"waiting for camera_info on {self._info_sub.topic_name}: no CameraInfo received "
                f"yet, so depth frames cannot be back-projected ({len(pending)} held)"))
            return
        settings, expected = self._settings, self._expected_streams()
        for stamp in pending:
            missing = [stream for stream in expected if self._matcher.get(stream, stamp) is None]
            if missing and self._waited(stamp) < settings.sync_timeout:
                continue
            depth_msg = self._matcher.pop(DEPTH, stamp)
            if missing and not settings.publish_incomplete:
                self.stats.dropped += 1
                self.warnings.warn("incomplete", f"dropped depth frame {stamp}: no {missing} with "
                                   "its stamp within sync_timeout (publish_incomplete is false)")
                continue
            self.stats.dropped += self._matcher.discard_through(DEPTH, stamp)
            self.stats.incomplete += bool(missing)
            self._process(depth_msg, stamp)
            for stream in self._optional_subs:
                self._matcher.discard_through(stream, stamp)
            return

    def _waited(self, stamp: StampKey) -> float:
        arrival = self._matcher.arrival(DEPTH, stamp)
        return math.inf if arrival is None else time.monotonic() - arrival

    def _process(self, depth_msg: Image, stamp: StampKey) -> None:
        info = self._matcher.get(CAMERA_INFO, stamp)
        if info is None:  # intrinsics rarely change: the latest camera_info will do
            info = self._matcher.latest(CAMERA_INFO)
        try:
            depth_m = depth_in_metres(depth_msg)
            camera = CameraModel.from_camera_info(info)
        except (ImageFormatError, ValueError) as error:
            self.stats.rejected += 1
            self.warnings.warn("bad_input", f"skipped depth frame {stamp}: {error}")
            return
        shape = depth_m.shape
        rgb = self._decoded(COLOR, stamp, lambda msg: aligned(image_to_rgb(msg), shape, False))
        labels = self._decoded(LABELS, stamp, lambda msg: aligned(labels_array(msg), shape, True))
        if not np.isfinite(depth_m).any():
            self.warnings.warn("no_depth", f"depth frame {stamp} has no finite depth values")
        try:
            self.build_and_publish(depth_m, camera, depth_msg.header, rgb=rgb, labels=labels)
        except ValueError as error:
            self.stats.rejected += 1
            self.warnings.warn("bad_input", f"skipped depth frame {stamp}: {error}")

    def _decoded(self, stream: str, stamp: StampKey, decode) -> np.ndarray | None:
        """The decoded ``stream`` message with this stamp; None (with a warning) if unusable."""
        msg = self._matcher.get(stream, stamp) if stream in self._optional_subs else None
        if msg is None:
            return None
        try:
            return decode(msg)
        except (ImageFormatError, ValueError) as error:
            self.warnings.warn(f"bad_{stream}",
                               f"publishing frame {stamp} without {stream}: {error}")
            return None


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
