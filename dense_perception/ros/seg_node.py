"""The ``seg`` node: semantic segmentation with any registered segmenter (``network``: EDAFormer,
SegFormer, PVTv2/PVT, HRViT, ViT-CoMer) and live ISR where the network has it
(:class:`dense_perception.api.Segmenter`). Class names and palette are the network's dataset's (or the
checkpoint's own); ``inference`` runs the network's official test mode, whole-image or sliding windows.

Subscribes ``image`` (any encoding :mod:`dense_perception.io.images` reads), or
``image/compressed`` with ``compressed:=true``. Publishes, each with the input image's header:
  ``seg/labels`` — class ids at the image's size: mono8, or 16UC1 above 255 classes;
  ``seg/colored`` (rgb8) — the dataset's palette blended over the image (``overlay_alpha``);
  ``seg/label_info`` — vision_msgs/LabelInfo (class id → name), once, transient-local, where
  vision_msgs is installed. The names are always also the read-only ``class_names`` parameter.
``/diagnostics`` — frame rate, latency, dropped frames and the ISR setting in use.

ISR (Inference Spatial Reduction) is dynamic: ``isr_ratio`` (k multiplies every training key/value
ratio the network can reduce: SegFormer's stage 4 has no reduction path and stays 1, so 2 serves
[16,8,4,1]), or explicit ``isr_encoder`` / ``isr_decoder`` in the paper's notation (e.g. [16,8,2,1] and
[2,4,8], decoder listed c4, c3, c2; EDAFormer only); empty (or [0], which ``ros2 param set`` can send) =
from ``isr_ratio``. Settings the network cannot express are rejected with the reason, and networks
without ISR (HRViT, ViT-CoMer) accept only ``isr_ratio`` 1 ("ISR does not apply to ..."). A setting whose pooling exceeds a feature map is rejected with the reason -- at the
fixed ``input_size`` if set, else at the last image's network size. A change applies from the next
frame on. The state lives in the segmenter's :class:`~dense_perception.isr_control.ISRControl`; every
change is logged, and ``/diagnostics`` shows what is asked and what serves. The parameters always
say what serves once a change settles: a setting whose engine fails to build, or that does not fit
a new image size (the nearest setting that fits serves then), is written back to the parameters
with the reason in the log.

Frames named on ``depth/frame_started`` (the depth node's claims) are segmented first, so that the
cloud of every depth frame gets its labels (``follow_depth_frames``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rcl_interfaces.msg import ParameterType
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from ..api import SegmentationResult, Segmenter
from ..defaults import DEFAULT_SEG_NETWORK
from ..isr_control import ISREvent
from ..networks.isr import EDAFORMER_ISR, ISRScheme, ISRSetting
from ..networks.registry import INFERENCE_MODES, available_networks
from ..pipeline.colormap import colorize_labels, overlay
from .inference_node import (
    INPUT_SIZE,
    RECENT_FRAMES,
    Frame,
    InferenceNode,
    Listeners,
    optional_size,
    predictor_options,
)
from .qos import qos_parameters
from .messages import copy_header, to_image_msg
from .params import ParamSpec
from .runtime import run_node
from .sync import stamp_key

try:  # not on the Python package registries; every ROS desktop install has it
    from vision_msgs.msg import LabelInfo, VisionClass
except ImportError:  # pragma: no cover - depends on the installation
    LabelInfo = VisionClass = None

SEG_PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("network", DEFAULT_SEG_NETWORK, "Segmentation network (EDAFormer, SegFormer, PVTv2/PVT, HRViT, "
              "ViT-CoMer; variant and dataset in the name)",
              read_only=True, choices=tuple(available_networks("segmentation"))),
    ParamSpec("inference", "official", "official: the network's official test mode (sliding windows for "
              "Cityscapes networks and ViT-CoMer, else whole-image); whole: one forward per image (fast); "
              "slide: the network's sliding windows", read_only=True, choices=("official",) + INFERENCE_MODES),
    ParamSpec("label_mode", "official", "official: logits resized to the image, then argmax; "
              "fast: argmax at network resolution, labels resized (nearest)", read_only=True,
              choices=("official", "fast")),
    ParamSpec("isr_ratio", 1, "ISR: every key/value pooling ratio multiplied by this "
              "(1 = training ratios; larger = faster, coarser attention)", minimum=1, maximum=64),
    ParamSpec("overlay_alpha", 0.5, "Weight of the palette colours over the image in seg/colored",
              minimum=0.0, maximum=1.0),
    ParamSpec("follow_depth_frames", True, "Segment the frames the depth node starts on first "
              "(depth/frame_started), so every point cloud gets its labels", read_only=True),
)
#: The segmenter's QoS: it holds the last frames, for the depth node may claim one its executor took
#: late (under load, a history of 1 loses frames before the node sees them).
SEG_QOS = qos_parameters(RECENT_FRAMES, f"{RECENT_FRAMES}: the frames the depth node may claim, "
                         "received even when the node lags; the newest is segmented")
#: The depth node's claims (std_msgs/Header of each image as depth starts on it).
FRAME_STARTED_TOPIC = "depth/frame_started"
ISR_LISTS: tuple[ParamSpec, ...] = (
    ParamSpec("isr_encoder", [], "ISR: effective pooling ratios of encoder stages 1-4, e.g. "
              "[16, 8, 2, 1]; empty or [0] = from isr_ratio",
              param_type=ParameterType.PARAMETER_INTEGER_ARRAY),
    ParamSpec("isr_decoder", [], "ISR: effective pooling ratios of decoder levels c4, c3, c2, e.g. "
              "[2, 4, 8]; empty or [0] = from isr_ratio",
              param_type=ParameterType.PARAMETER_INTEGER_ARRAY),
)
#: Integer-list parameters (empty defaults allowed: :func:`.params.declare_parameters` types them).
SEG_LISTS: tuple[ParamSpec, ...] = (INPUT_SIZE,) + ISR_LISTS
CLASS_NAMES = ParamSpec("class_names", [""], "The network's class names, index = label id "
                        "(read-only, set by the node)", read_only=True,
                        param_type=ParameterType.PARAMETER_STRING_ARRAY)
#: LabelInfo is latched: late subscribers (RViz, loggers) still get it.
LABEL_INFO_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                            reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL)
LABEL_ENCODINGS = {np.dtype(np.uint8): "mono8", np.dtype(np.uint16): "16UC1"}


@dataclass(frozen=True)
class SegFrame:
    """One processed frame, as handed to in-process listeners (the ``perception`` executable)."""

    header: Any  # std_msgs/Header of the input image
    rgb: np.ndarray  # [H, W, 3] uint8
    result: SegmentationResult  # labels at the image's size and the ISR setting used


@dataclass(frozen=True)
class SegSettings:
    """The dynamic colour parameters, swapped as a whole."""

    publish_colored: bool
    overlay_alpha: float


def isr_from_values(values: Mapping[str, Any], scheme: ISRScheme | None = EDAFORMER_ISR) -> ISRSetting | int | None:
    """The ISR setting the parameters ask for, of the network's ``scheme`` (``ValueError`` with the
    reason if it cannot express it). Without a scheme (no ISR) what was asked is returned as it is --
    the ratio, or the explicit ratios as a setting -- for the network to refuse unless ratio 1."""
    def explicit(ratios: Sequence[int]) -> list[int] | None:
        return None if len(ratios) == 0 or list(ratios) == [0] else list(ratios)

    encoder, decoder = explicit(values["isr_encoder"]), explicit(values["isr_decoder"])
    if scheme is None:
        return ISRSetting(encoder or (), decoder or ()) if encoder or decoder else values["isr_ratio"]
    return scheme.make(values["isr_ratio"], encoder, decoder)


def label_info_message(names: Sequence[str], header: Any) -> Any:
    """A vision_msgs/LabelInfo mapping each label id to its name (needs vision_msgs)."""
    if LabelInfo is None:
        raise RuntimeError("vision_msgs is not installed")
    return LabelInfo(header=header, threshold=0.0, class_map=[
        VisionClass(class_id=index, class_name=name) for index, name in enumerate(names)])


class SegNode(InferenceNode):
    """``image`` → ``seg/labels``, ``seg/colored``, ``seg/label_info``; see the module docstring."""

    def __init__(self, node_name: str = "seg", follow_topic: bool = True, **kwargs: Any) -> None:
        """``follow_topic=False``: no ``depth/frame_started`` subscription -- the one-process
        ``perception`` executable calls :meth:`require` with the depth node's frames instead."""
        self.segmenter: Segmenter
        self._settings: SegSettings
        self._writing_isr = False  # the node writes the ISR parameters itself (governor, fallback)
        super().__init__(node_name, SEG_PARAMETERS, SEG_LISTS, qos=SEG_QOS, **kwargs)
        self.listeners: Listeners[SegFrame] = Listeners()
        #: told of each required frame that was not segmented, with the reason
        self.skipped_listeners: Listeners[tuple[Frame, str]] = Listeners()
        if self.segmenter.isr_control is not None:
            self.segmenter.isr_control.listeners.append(self._on_isr_event)
        self.frames_sub = None
        if follow_topic and self.get_parameter("follow_depth_frames").value:
            self.frames_sub = self.create_subscription(
                Header, FRAME_STARTED_TOPIC, self._on_frame_started, self.input_qos)
        self.declare_parameter(CLASS_NAMES.name, list(self.segmenter.class_names),
                               CLASS_NAMES.descriptor(), ignore_override=True)
        self.labels_pub = self.output_publisher(Image, "seg/labels")
        self.colored_pub = self.output_publisher(Image, "seg/colored")
        self.label_info_pub = None
        if LabelInfo is not None:
            self.label_info_pub = self.create_publisher(LabelInfo, "seg/label_info", LABEL_INFO_QOS)
            header = Header(stamp=self.get_clock().now().to_msg())
            self.publish(self.label_info_pub, label_info_message(self.segmenter.class_names, header))

    # -- InferenceNode hooks ----------------------------------------------------------------------

    def build(self, values: Mapping[str, Any]) -> None:
        inference = None if values["inference"] == "official" else values["inference"]
        self.segmenter = Segmenter(values["network"], label_mode=values["label_mode"], inference=inference,
                                   **predictor_options(values))

    @property
    def predictor(self) -> Segmenter:
        return self.segmenter

    def check_parameters(self, values: Mapping[str, Any]) -> str | None:
        """ISR values that make a setting, and whose pools fit the network's feature maps; no ISR
        change by hand while a frame budget chooses it."""
        try:
            setting = isr_from_values(values, self.segmenter.isr_scheme)
            if not self.segmenter.has_isr:
                self.segmenter.set_isr(setting)  # a no-op for ratio 1; the reason otherwise
                return None
        except ValueError as error:
            return str(error)
        if values["frame_budget_ms"] > 0 and not self._writing_isr and self._isr_values_change(values):
            return ("frame_budget_ms is set: the frame budget chooses the ISR setting; set "
                    "frame_budget_ms to 0 to choose it yourself")
        size = optional_size(values["input_size"]) or self.last_image_size
        if size is None:
            return None  # no image yet: checked against the first frame (see process)
        try:
            self.segmenter.check_isr(setting, *size)
        except ValueError as error:
            where = "input_size" if values["input_size"] else "the last image's network size"
            return f"{error} ({where}; try a smaller isr_ratio)"
        return None

    def _isr_values_change(self, values: Mapping[str, Any]) -> bool:
        """True when ``values`` change an ISR parameter (compared with the node's current ones)."""
        names = ("isr_ratio", "isr_encoder", "isr_decoder")
        if not all(self.has_parameter(name) for name in names):
            return False  # still declaring
        return any(list(np.atleast_1d(values[name])) != list(np.atleast_1d(self.get_parameter(name).value))
                   for name in names)

    def apply_parameters(self, values: Mapping[str, Any]) -> None:
        self._settings = SegSettings(values["publish_colored"], values["overlay_alpha"])
        control = self.segmenter.isr_control
        if control is None:
            return  # no ISR: only ratio 1 passed the check
        setting = isr_from_values(values, control.scheme)
        if setting != control.state.requested:
            try:
                self.segmenter.set_isr(setting)
            except ValueError as error:  # checked already; only a new image size can get here
                self.warnings.warn("isr", f"ISR {control.scheme.text(setting)} not taken: {error}")

    def process(self, rgb: np.ndarray, header: Any) -> None:
        settings = self._settings
        result = self.segmenter.predict(rgb)
        out_header = copy_header(header)
        labels = result.labels
        self.publish(self.labels_pub, to_image_msg(labels, LABEL_ENCODINGS[labels.dtype], out_header))
        if settings.publish_colored:
            colored = overlay(rgb, colorize_labels(labels, self.segmenter.palette),
                              settings.overlay_alpha)
            self.publish(self.colored_pub, to_image_msg(colored, "rgb8", out_header))
        self.listeners.emit(SegFrame(out_header, rgb, result))

    def frame_skipped(self, frame: Frame, reason: str) -> None:
        self.skipped_listeners.emit((frame, reason))

    def diagnostic_values(self) -> dict[str, Any]:
        seg = self.segmenter
        isr = {"isr": "does not apply"}
        if seg.isr_control is not None:
            state = seg.isr_control.state
            isr = {"isr": state.text(state.served), **state.describe()}
        return {"network": seg.network, "backend": seg.backend, "inference": seg.inference.mode, **isr,
                "classes": len(seg.class_names), "untrained": seg.untrained}

    # -- depth's frames ---------------------------------------------------------------------------

    def _on_frame_started(self, header: Header) -> None:
        """A frame the depth node started on: segment it next (if it is still held)."""
        if not self.closing and not self.require_stamp(stamp_key(header.stamp)):
            self.warnings.warn("frame_gone", (
                f"depth started on frame {stamp_key(header.stamp)}, which this node does not hold (dropped, "
                "or lost on the way): its cloud will have no labels"))

    # -- ISR --------------------------------------------------------------------------------------

    def _on_isr_event(self, event: ISREvent) -> None:
        """Log every ISR change; keep the parameters equal to what serves once a change settles."""
        if self.closing:
            return
        if event.kind == "failed" or (event.kind == "fallback" and event.state.fallback is not None):
            self.get_logger().warning(event.message)
        else:
            self.get_logger().info(event.message)
        if event.kind == "failed":
            self._write_isr_parameters(event.state.requested, event.message)
        elif event.kind == "fallback" and event.state.fallback_setting is not None:
            self._write_isr_parameters(event.state.fallback_setting, event.message)
        elif event.kind == "requested" and event.by == "governor":
            self._write_isr_parameters(event.state.requested, event.message)

    def _write_isr_parameters(self, setting: ISRSetting | None, reason: str) -> None:
        """Set the ISR parameters to ``setting`` (its explicit ratios; None, an adaptive training grid:
        ``isr_ratio`` 1 and no explicit ratios)."""
        if setting is None:
            parameters = [Parameter("isr_ratio", value=1), Parameter("isr_encoder", value=[0]),
                          Parameter("isr_decoder", value=[0])]
        else:
            parameters = [Parameter("isr_encoder", value=list(setting.encoder)),
                          Parameter("isr_decoder", value=list(setting.decoder) or [0])]
        self._writing_isr = True
        try:
            result = self.set_parameters_atomically(parameters)
        finally:
            self._writing_isr = False
        if not result.successful:
            self.warnings.warn("isr_revert", f"could not set the ISR parameters to {setting} "
                               f"({reason}): {result.reason}")


def main(args: list[str] | None = None) -> int:
    """Entry point of the ``seg`` executable."""
    return run_node(SegNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
