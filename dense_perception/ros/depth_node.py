"""The ``depth`` node: monocular depth with DPT (:class:`dense_perception.api.DepthEstimator`).

Subscribes (relative names, remappable):
  ``image`` (sensor_msgs/Image: rgb8, bgr8, rgba8, bgra8, mono8, mono16, yuv422 variants, bayer
  patterns), or ``image/compressed`` (sensor_msgs/CompressedImage) with ``compressed:=true``;
  ``camera_info`` (sensor_msgs/CameraInfo), matched to the image by exact stamp (else the latest).
Publishes, each with the input image's header:
  ``depth/image`` (32FC1, **metres**, REP 118) — from the metric networks (``dpt_hybrid_nyu``, the
  default: indoor scenes; ``dpt_hybrid_kitti``: driving scenes), or from a MiDaS network given a
  per-scene fit ``depth_scale`` > 0 / ``depth_shift`` (``1 / (depth_scale·d + depth_shift)``).
  ``depth/relative_inverse`` (32FC1) — instead of ``depth/image`` for a MiDaS network without a fit:
  *relative inverse depth*, larger is nearer, no unit. Nothing that expects metres is fed with it.
  ``depth/camera_info`` — the camera's CameraInfo with the image's header, so
  ``depth_image_proc`` and RViz's DepthCloud can use ``depth/image``; a CameraInfo of another size
  than the image is rescaled to it (``k``, ``p``, width, height; throttled warning); not published
  while no camera_info has arrived (depth still is, with a throttled warning).
  ``depth/colored`` (rgb8) — the depth through a colour map, near = low end, with a range that
  follows the scene slowly (:class:`~dense_perception.pipeline.colormap.StableRange`).
  ``depth/frame_started`` (std_msgs/Header) — the header of each image as depth starts on it, so that
  the ``seg`` and ``cloud`` nodes keep (and segment) that frame: every cloud gets its labels
  (:mod:`dense_perception.pipeline.pairing`).
A camera_info is checked when it arrives (positive size, finite focal lengths of a sane field of view,
a principal point on the image, :func:`~dense_perception.pipeline.cloud.check_camera`); a bad one is
rejected with the reason and the last good one stays in use.
``/diagnostics`` — frame rate, latency, dropped/rejected/failed frames.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from ..api import DepthEstimator, DepthResult
from ..defaults import DEFAULT_DEPTH_NETWORK
from ..networks.registry import available_networks
from ..pipeline.cloud import CameraModel
from ..pipeline.colormap import COLORMAPS, StableRange, colorize_depth
from .inference_node import INPUT_SIZE, Frame, InferenceNode, Listeners, predictor_options
from .messages import camera_info_for_image, copy_header, to_image_msg
from .params import ParamSpec
from .runtime import run_node
from .sync import StampMatcher, stamp_key

CAMERA_INFO = "camera_info"
#: Where depth goes: metres (REP 118) or, for a relative network without a fit, relative inverse depth.
METRIC_TOPIC, RELATIVE_TOPIC = "depth/image", "depth/relative_inverse"
#: The header of each image as depth starts on it (see the module docstring).
FRAME_STARTED_TOPIC = "depth/frame_started"

DEPTH_PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("network", DEFAULT_DEPTH_NETWORK, "DPT network: dpt_hybrid_nyu (metres, indoor), "
              "dpt_hybrid_kitti (metres, driving), dpt_*_midas (relative inverse depth on "
              "depth/relative_inverse, any scene)", read_only=True,
              choices=tuple(available_networks("depth"))),
    ParamSpec("depth_scale", 0.0, "MiDaS networks: scale of a per-scene fit on inverse depth; > 0 "
              "publishes metres = 1 / (depth_scale*d + depth_shift) on depth/image; 0 = relative "
              "inverse depth on depth/relative_inverse",
              read_only=True, minimum=0.0, maximum=1.0e9),
    ParamSpec("depth_shift", 0.0, "MiDaS networks: shift of that fit (used when depth_scale > 0)",
              read_only=True, minimum=-1.0e9, maximum=1.0e9),
    ParamSpec("colormap", "turbo", "Colour map of depth/colored", choices=tuple(COLORMAPS)),
    ParamSpec("color_range_alpha", 0.1, "How fast the colour range of depth/colored follows the "
              "scene (moving-average weight of each frame; 1 = every frame on its own)",
              minimum=0.001, maximum=1.0),
    ParamSpec("camera_info_queue_size", 10, "camera_info messages kept for matching by stamp",
              read_only=True, minimum=1, maximum=100),
)
#: Integer-list parameters (empty defaults allowed: :func:`.params.declare_parameters` types them).
DEPTH_LISTS: tuple[ParamSpec, ...] = (INPUT_SIZE,)


@dataclass(frozen=True)
class DepthFrame:
    """One processed frame, as handed to in-process listeners (the ``perception`` executable)."""

    header: Any  # std_msgs/Header of the input image
    rgb: np.ndarray  # [H, W, 3] uint8, the decoded input
    result: DepthResult  # depth at the image's size
    camera_info: CameraInfo | None  # matched by stamp (else the latest), None if none arrived


@dataclass(frozen=True)
class DepthColor:
    """The dynamic colour settings, swapped as a whole."""

    colormap: str
    publish: bool
    range: StableRange


class DepthNode(InferenceNode):
    """``image`` (+ ``camera_info``) → ``depth/image``, ``depth/camera_info``, ``depth/colored``."""

    input_multiple = 32

    def __init__(self, node_name: str = "depth", **kwargs: Any) -> None:
        self.estimator: DepthEstimator
        self._color: DepthColor
        super().__init__(node_name, DEPTH_PARAMETERS, DEPTH_LISTS, **kwargs)
        self.listeners: Listeners[DepthFrame] = Listeners()
        #: told of each frame as depth starts on it (the one-process composition)
        self.started_listeners: Listeners[Frame] = Listeners()
        #: camera_info messages rejected (and why: the throttled warning "camera_info_rejected")
        self.camera_infos_rejected = 0
        self._info_lock = threading.Lock()
        self._infos = StampMatcher([CAMERA_INFO],
                                   capacity=self.get_parameter("camera_info_queue_size").value)
        self.info_sub = self.create_subscription(
            CameraInfo, "camera_info", self._on_camera_info, self.input_qos)
        #: ``depth/image`` (metres) or ``depth/relative_inverse``: never relative values as metres
        self.depth_topic = RELATIVE_TOPIC if self.relative else METRIC_TOPIC
        self.depth_pub = self.output_publisher(Image, self.depth_topic)
        self.get_logger().info(self.output_line())
        self.info_pub = self.output_publisher(CameraInfo, "depth/camera_info")
        self.colored_pub = self.output_publisher(Image, "depth/colored")
        self.started_pub = self.output_publisher(Header, FRAME_STARTED_TOPIC)

    # -- InferenceNode hooks ----------------------------------------------------------------------

    def build(self, values: Mapping[str, Any]) -> None:
        fitted = values["depth_scale"] > 0
        self.estimator = DepthEstimator(
            values["network"], depth_scale=values["depth_scale"] if fitted else None,
            depth_shift=values["depth_shift"] if fitted else None, **predictor_options(values))

    @property
    def predictor(self) -> DepthEstimator:
        return self.estimator

    def apply_parameters(self, values: Mapping[str, Any]) -> None:
        self._color = DepthColor(values["colormap"], values["publish_colored"], StableRange(
            alpha=values["color_range_alpha"], inverse=self.relative))

    def frame_started(self, frame: Frame) -> None:
        self.publish(self.started_pub, copy_header(frame.msg.header))
        self.started_listeners.emit(frame)

    def process(self, rgb: np.ndarray, header: Any) -> None:
        result = self.estimator.predict(rgb)
        out_header = copy_header(header)
        self.publish(self.depth_pub, to_image_msg(result.depth, "32FC1", out_header))
        info = self._camera_info_for(header)
        if info is not None:
            height, width = result.depth.shape
            published = camera_info_for_image(info, out_header, width, height)
            if (published.width, published.height) != (info.width, info.height):
                self.warnings.warn("camera_info_size", (
                    f"CameraInfo on {self.info_sub.topic_name} is {info.width}x{info.height}, the image "
                    f"{width}x{height}: depth/camera_info is rescaled to the image"))
            self.publish(self.info_pub, published)
            info = published
        else:
            self.warnings.warn(CAMERA_INFO, (
                f"no usable CameraInfo received on {self.info_sub.topic_name}: publishing depth "
                "without depth/camera_info"))
        color = self._color
        if color.publish:
            vmin, vmax = color.range.update(result.depth)
            colored = colorize_depth(result.depth, vmin, vmax, color.colormap,
                                     inverse=color.range.inverse)
            self.publish(self.colored_pub, to_image_msg(colored, "rgb8", out_header))
        self.listeners.emit(DepthFrame(out_header, rgb, result, info))

    def diagnostic_values(self) -> dict[str, Any]:
        return {"network": self.estimator.network, "backend": self.estimator.backend,
                "output": "relative inverse depth" if self.relative else "metres",
                "output topic": self.depth_pub.topic_name,
                "camera_info rejected": self.camera_infos_rejected,
                "untrained": self.estimator.untrained}

    # -- camera_info ------------------------------------------------------------------------------

    @property
    def relative(self) -> bool:
        """True when the output is relative inverse depth (published on ``depth/relative_inverse``)."""
        return not self.estimator.output.is_metric

    def output_line(self) -> str:
        """One line saying what the depth output means and where it goes (logged at start)."""
        if self.relative:
            return (f"{self.estimator.network} gives relative inverse depth (no unit): publishing it on "
                    f"{self.depth_pub.topic_name}, not on depth/image (metres); no point cloud can be "
                    "made from it. For metres set depth_scale/depth_shift (a per-scene fit) or use "
                    "network dpt_hybrid_nyu (indoor) or dpt_hybrid_kitti (driving)")
        return (f"{self.estimator.network}: {self.estimator.output.description}; publishing metres on "
                f"{self.depth_pub.topic_name}")

    def _on_camera_info(self, msg: CameraInfo) -> None:
        """Keep a camera_info that describes a camera; reject others with the reason."""
        try:
            CameraModel.from_camera_info(msg)
        except ValueError as error:
            self.camera_infos_rejected += 1
            self.warnings.warn("camera_info_rejected", (
                f"rejected CameraInfo {stamp_key(msg.header.stamp)} on {self.info_sub.topic_name}: "
                f"{error}; the last good one stays in use"))
            return
        with self._info_lock:
            self._infos.add(CAMERA_INFO, stamp_key(msg.header.stamp), msg)

    def _camera_info_for(self, header: Any) -> CameraInfo | None:
        """The camera_info with the image's stamp, else the latest (intrinsics rarely change)."""
        with self._info_lock:
            info = self._infos.get(CAMERA_INFO, stamp_key(header.stamp))
            return info if info is not None else self._infos.latest(CAMERA_INFO)


def main(args: list[str] | None = None) -> int:
    """Entry point of the ``depth`` executable."""
    return run_node(DepthNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
