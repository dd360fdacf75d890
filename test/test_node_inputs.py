"""The nodes against what arrives in the field: oversized and undecodable images, bad camera_info,
a broken parameter file, images lost between processes; and the Humble parameter API.

Real rclpy throughout; executables are started as ``ros2 run`` starts them where the behaviour is
about the process (exit status, log lines).
"""
from __future__ import annotations

import array
import subprocess

import cv2
import numpy as np
import pytest
import rclpy
from builtin_interfaces.msg import Time
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_fixtures import ros_context, ros_environment, spin_until  # noqa: F401
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from dense_perception.io.images import ImageFormatError, compressed_image_size, message_to_rgb
from dense_perception.networks.isr import ISRSetting
from dense_perception.ros.cloud_node import CloudNode
from dense_perception.ros.depth_node import DepthNode
from dense_perception.ros.seg_node import SegNode

from test_depth_seg_nodes import RELIABLE, bgr8_image, harness, header, overrides  # noqa: F401
from test_shutdown import executable, signal_and_measure, start


def png_bytes(height: int, width: int) -> bytes:
    ok, encoded = cv2.imencode(".png", np.zeros((height, width, 3), np.uint8))
    assert ok
    return encoded.tobytes()


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header (IHDR, with a valid CRC) claims ``width`` x ``height`` pixels."""
    import struct
    import zlib

    data = png_bytes(8, 8)
    ihdr = b"IHDR" + struct.pack(">II", width, height) + data[24:29]
    return data[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + data[33:]


# -- ROS-free checks --------------------------------------------------------------------------------


def test_compressed_size_comes_from_the_header_alone():
    data = png_bytes(30, 70)
    assert compressed_image_size(data, "png") == (70, 30)
    assert compressed_image_size(png_claiming(6000, 4000), "png") == (6000, 4000)  # pixels unread
    with pytest.raises(ImageFormatError, match="header"):
        compressed_image_size(b"not an image at all", "jpeg")
    with pytest.raises(ImageFormatError, match="no data"):
        compressed_image_size(b"", "png")


def test_oversized_images_are_rejected_before_decoding():
    big = Image(height=5000, width=5000, encoding="rgb8", step=15000)  # no data: never read
    with pytest.raises(ImageFormatError, match="exceeds the limit of 12,582,912 pixels"):
        message_to_rgb(big, max_pixels=12_582_912)
    bomb = CompressedImage(format="png", data=png_claiming(6000, 6000))  # 36 MP in a few bytes
    with pytest.raises(ImageFormatError, match="6000x6000"):
        message_to_rgb(bomb, max_pixels=12_582_912)


# -- nodes ------------------------------------------------------------------------------------------


def test_max_input_pixels_rejects_with_the_reason_and_serves_the_next_frame(ros_context, harness):
    seg = SegNode(context=ros_context, parameter_overrides=overrides(input_size=[64, 64],
                                                                     max_input_pixels=2000))
    graph = harness([seg], {"seg/labels": Image})
    graph.image_pub.publish(bgr8_image(1))  # 48x64 = 3072 pixels
    assert graph.spin_until(lambda: seg.diagnostics.rejected == 1)
    assert "exceeds the limit of 2,000 pixels" in seg.warnings.last_message["bad_image"]
    assert seg.set_parameters([Parameter("max_input_pixels", value=4000)])[0].successful
    graph.image_pub.publish(bgr8_image(2))
    assert graph.next("seg/labels", 1).header.stamp.sec == 2
    assert not seg.set_parameters([Parameter("max_input_pixels", value=0)])[0].successful


def test_bad_camera_info_is_rejected_and_the_last_good_one_stays(ros_context, harness):
    depth = DepthNode(context=ros_context, parameter_overrides=overrides(input_size=[64, 64]))
    graph = harness([depth], {"depth/camera_info": CameraInfo})
    good = CameraInfo(header=header(1), width=64, height=48, k=[40.0, 0, 32, 0, 40.0, 24, 0, 0, 1])
    graph.info_pub.publish(good)
    assert graph.spin_until(lambda: depth._camera_info_for(header(1)) is not None)
    for sec, bad, reason in [
        (2, CameraInfo(width=0, height=48, k=good.k), "no image size"),
        (3, CameraInfo(width=64, height=48, k=[1e-300, 0, 32, 0, 40.0, 24, 0, 0, 1]), "field of view"),
        (4, CameraInfo(width=64, height=48, k=[float("nan")] + [1.0] * 8), "non-finite"),
    ]:
        bad.header = header(sec)
        graph.info_pub.publish(bad)
        assert graph.spin_until(lambda: depth.camera_infos_rejected == sec - 1), reason
        assert reason in depth.warnings.last_message["camera_info_rejected"]
    graph.image_pub.publish(bgr8_image(4))
    published = graph.next("depth/camera_info", 1, timeout_s=60.0)
    assert list(published.k) == list(good.k) and published.header.stamp.sec == 4


def test_humble_parameter_api_validates_then_applies(ros_context, monkeypatch):
    """Humble's rclpy has no post-set callback: the nodes validate and apply from the on-set one."""
    monkeypatch.delattr(Node, "add_post_set_parameters_callback")
    seg = SegNode(context=ros_context, parameter_overrides=overrides(input_size=[64, 64]))
    cloud = CloudNode(context=ros_context)
    try:
        assert not hasattr(seg, "add_post_set_parameters_callback")
        assert seg.set_parameters([Parameter("isr_ratio", value=2)])[0].successful
        assert seg.segmenter.isr_control.state.requested == ISRSetting.from_ratio(2)
        refused = seg.set_parameters([Parameter("isr_ratio", value=3)])[0]  # pools exceed 64x64 maps
        assert not refused.successful and "does not fit" in refused.reason
        assert seg.segmenter.isr_control.state.requested == ISRSetting.from_ratio(2)
        assert cloud.set_parameters([Parameter("cloud_stride", value=4)])[0].successful
        assert cloud.settings.stride == 4
        refused = cloud.set_parameters([Parameter("min_depth", value=500.0)])[0]
        assert not refused.successful and cloud.settings.min_depth == 0.0
    finally:
        seg.destroy_node()
        cloud.destroy_node()


def test_a_bad_parameter_file_value_stops_with_one_line(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("/**/seg:\n  ros__parameters:\n    isr_ratio: two\n")
    process = subprocess.run([executable("seg"), "--ros-args", "--params-file", str(config)],
                             capture_output=True, text=True, timeout=120)
    output = process.stdout + process.stderr
    assert process.returncode == 1, output
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and "isr_ratio" in errors[0], output


def test_untrained_warning_goes_to_the_ros_log(ros_context):
    process = start("seg", "/untrained_log", "-p", "input_size:=[64,64]")
    node = rclpy.create_node("watcher", context=ros_context)
    try:
        assert spin_until_node(node, lambda: node.count_subscribers("/untrained_log/image") > 0, 60.0)
    finally:
        node.destroy_node()
    status, _elapsed, output = signal_and_measure(process, (2,))
    assert status == 0
    lines = [line for line in output.splitlines() if "UNTRAINED" in line]
    assert lines and all(line.startswith("[WARN]") and "[dense_perception.api]" in line for line in lines), output


def spin_until_node(node, condition, timeout_s: float) -> bool:
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    try:
        return spin_until(executor, condition, timeout_s)
    finally:
        executor.shutdown()


def test_images_lost_between_processes_are_counted(ros_context):
    """Best-effort 1920x1080 frames into another process: the middleware reports the ones it loses
    (on default socket buffers most are), and the node counts them on /diagnostics."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor

    namespace = "/lossy"
    process = start("seg", namespace, "-p", "input_size:=[64,64]", "-p", "diagnostics_period:=0.2",
                    "-p", "publish_colored:=false")
    node = rclpy.create_node("lossy_camera", namespace=namespace, context=ros_context)
    best_effort = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
    publisher = node.create_publisher(Image, "image", best_effort)
    statuses: list = []
    node.create_subscription(DiagnosticArray, "/diagnostics", statuses.append, 10)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    try:
        assert spin_until(executor, lambda: publisher.get_subscription_count() > 0, 60.0)
        frame = Image(header=Header(frame_id="camera"), height=1080, width=1920, encoding="rgb8", step=5760)
        frame.data = array.array("B", bytes(1080 * 1920 * 3))
        for index in range(40):
            frame.header.stamp = Time(sec=index)
            publisher.publish(frame)
            spin_until(executor, lambda: False, 0.05)

        def lost() -> int:
            values = [dict((kv.key, kv.value) for kv in s.values) for m in statuses for s in m.status
                      if s.name.startswith(f"{namespace}/seg")]
            return max((int(v.get("inputs lost (middleware)", 0)) for v in values), default=0)
        spin_until(executor, lambda: lost() > 0, 5.0)
        if lost() == 0:
            pytest.skip("no frame was lost on this machine's transport (large socket buffers or "
                        "shared memory): nothing to count")
        assert lost() > 0
    finally:
        executor.shutdown()
        node.destroy_node()
        status, _elapsed, output = signal_and_measure(process, (2,))
        assert status == 0, output


def test_qos_can_be_overridden_like_image_pipelines_nodes(ros_context):
    """``qos_overrides.<topic>.<subscription|publisher>.<policy>`` parameters (history, depth,
    reliability), as rclcpp/rclpy define them."""
    seg = SegNode(context=ros_context, namespace="/qos", parameter_overrides=overrides(input_size=[64, 64]) + [
        Parameter("qos_overrides./qos/image.subscription.reliability", value="reliable"),
        Parameter("qos_overrides./qos/image.subscription.depth", value=3),
        Parameter("qos_overrides./qos/seg/labels.publisher.reliability", value="best_effort")])
    try:
        assert seg.image_sub.qos_profile.reliability == ReliabilityPolicy.RELIABLE
        assert seg.image_sub.qos_profile.depth == 3
        assert seg.labels_pub.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
        assert seg.colored_pub.qos_profile.reliability == ReliabilityPolicy.RELIABLE  # not overridden
    finally:
        seg.destroy_node()
