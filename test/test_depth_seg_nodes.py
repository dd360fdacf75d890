"""The ``depth`` and ``seg`` nodes and the one-process ``perception`` graph, with real rclpy.

A test node publishes Image (+ CameraInfo) and receives every output; parameters go through the
real SetParameters service, built as ``ros2 param set`` builds it. Networks run with untrained
weights at small fixed input sizes, so the values are compared with the node's own predictor.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.srv import SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter, get_parameter_value
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_fixtures import ros_context, ros_environment, spin_until  # noqa: F401
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header

from dense_perception.io.images import image_array
from dense_perception.networks.isr import ISRSetting
from dense_perception.pipeline.cloud import CLOUD_DTYPE, scale_intrinsics
from dense_perception.pipeline.colormap import (
    colorize_depth, colorize_labels, overlay, robust_range)
from dense_perception.ros import seg_node
from dense_perception.ros.depth_node import DepthNode
from dense_perception.ros.diagnostics import FrameTiming
from dense_perception.ros.messages import camera_info_for_image, camera_info_with_header, to_image_msg
from dense_perception.ros.perception import Perception, parse_options
from dense_perception.ros.seg_node import SegNode, isr_from_values, label_info_message

FRAME = "camera_optical_frame"
HEIGHT, WIDTH = 48, 64
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
K = [40.0, 0.0, 32.0, 0.0, 40.0, 24.0, 0.0, 0.0, 1.0]


def header(sec: int) -> Header:
    return Header(frame_id=FRAME, stamp=Time(sec=sec, nanosec=7))


def bgr8_image(sec: int, rgb: np.ndarray = RGB) -> Image:
    """The frame as a camera driver sends it: bgr8 (the node must convert)."""
    msg = to_image_msg(np.ascontiguousarray(rgb[..., ::-1]), "rgb8", header(sec))
    msg.encoding = "bgr8"
    return msg


def camera_info(sec: int) -> CameraInfo:
    return camera_info_with_header(CameraInfo(width=WIDTH, height=HEIGHT, k=K), header(sec))


def test_camera_info_for_image_rescales_k_and_p_of_another_size():
    info = CameraInfo(width=640, height=480, k=[500.0, 0, 319.5, 0, 500.0, 239.5, 0, 0, 1],
                      p=[500.0, 0, 319.5, -25.0, 0, 500.0, 239.5, 0, 0, 0, 1, 0], d=[0.1, 0, 0, 0, 0],
                      distortion_model="plumb_bob")
    half = camera_info_for_image(info, header(4), 320, 240)
    assert_header(half, 4)
    assert (half.width, half.height, half.distortion_model, list(half.d)) == (
        320, 240, "plumb_bob", [0.1, 0, 0, 0, 0])
    # pixel centres at integer coordinates: c' = (c + 0.5) / 2 - 0.5
    assert list(half.k) == [250.0, 0, 159.5, 0, 250.0, 119.5, 0, 0, 1]
    assert list(half.p) == [250.0, 0, 159.5, -12.5, 0, 250.0, 119.5, 0, 0, 0, 1, 0]
    assert camera_info_for_image(info, header(4), 640, 480).k.tolist() == info.k.tolist()
    unknown = camera_info_for_image(CameraInfo(k=K), header(4), 320, 240)  # 0x0: describes the image
    assert (unknown.width, unknown.height, unknown.k.tolist()) == (0, 0, K)
    uncalibrated = camera_info_for_image(CameraInfo(width=640, height=480), header(4), 320, 240)
    assert not any(uncalibrated.k) and not any(uncalibrated.p) and uncalibrated.width == 320


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Harness:
    """Nodes under test and a tester node, on one executor spun by the test thread."""

    def __init__(self, context, nodes, outputs: dict[str, type], raw_input: bool = True) -> None:
        self.nodes = list(nodes)
        self.tester = rclpy.create_node("tester", context=context)
        self.image_pub = self.tester.create_publisher(Image, "image", RELIABLE)
        self.info_pub = self.tester.create_publisher(CameraInfo, "camera_info", RELIABLE)
        self.received: dict[str, list] = {topic: [] for topic in outputs}
        subs = [self.tester.create_subscription(kind, topic, self.received[topic].append, RELIABLE)
                for topic, kind in outputs.items()]
        self.executor = SingleThreadedExecutor(context=context)
        for node in self.nodes + [self.tester]:
            self.executor.add_node(node)
        def discovered() -> bool:
            image_ok = self.image_pub.get_subscription_count() > 0 or not raw_input
            return image_ok and all(sub.get_publisher_count() > 0 for sub in subs)
        assert self.spin_until(discovered), "discovery timed out"

    def spin_until(self, condition, timeout_s: float = 20.0) -> bool:
        return spin_until(self.executor, condition, timeout_s)

    def next(self, topic: str, count: int, timeout_s: float = 30.0):
        assert self.spin_until(lambda: len(self.received[topic]) >= count, timeout_s), (
            f"no message #{count} on {topic}; "
            f"{[node.warnings.last_message for node in self.nodes]}")
        return self.received[topic][count - 1]

    def set_parameter(self, node_name: str, name: str, text: str):
        """What ``ros2 param set /<node_name> <name> <text>`` sends, through the real service."""
        client = self.tester.create_client(SetParameters, f"/{node_name}/set_parameters")
        assert self.spin_until(client.service_is_ready)
        request = SetParameters.Request(
            parameters=[ParameterMsg(name=name, value=get_parameter_value(text))])
        future = client.call_async(request)
        assert self.spin_until(future.done)
        self.tester.destroy_client(client)
        [result] = future.result().results
        return result

    def close(self) -> None:
        self.executor.shutdown()
        for node in self.nodes + [self.tester]:
            node.destroy_node()


@pytest.fixture
def harness(ros_context):
    made: list[Harness] = []

    def make(nodes, outputs, **kwargs) -> Harness:
        made.append(Harness(ros_context, nodes, outputs, **kwargs))
        return made[-1]

    yield make
    for item in made:
        item.close()


def overrides(**values) -> list[Parameter]:
    return [Parameter(name, value=value) for name, value in values.items()]


def make_seg(context, **values) -> SegNode:
    return SegNode(context=context, parameter_overrides=overrides(input_size=[64, 64], **values))


def seg_outputs() -> dict[str, type]:
    return {"seg/labels": Image, "seg/colored": Image, "/diagnostics": DiagnosticArray}


def assert_header(msg, sec: int) -> None:
    assert msg.header.frame_id == FRAME
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (sec, 7)


# -- seg ------------------------------------------------------------------------------------------


def test_seg_publishes_labels_colored_and_diagnostics(ros_context, harness):
    seg = make_seg(ros_context, diagnostics_period=0.2)
    graph = harness([seg], seg_outputs())
    graph.image_pub.publish(bgr8_image(3))
    labels_msg = graph.next("seg/labels", 1)
    colored_msg = graph.next("seg/colored", 1)

    for msg in (labels_msg, colored_msg):
        assert_header(msg, 3)
        assert (msg.height, msg.width) == (HEIGHT, WIDTH)
    assert (labels_msg.encoding, colored_msg.encoding) == ("mono8", "rgb8")
    expected = seg.segmenter.predict(RGB).labels  # bgr8 was converted to the same RGB
    labels = image_array(labels_msg)
    assert np.array_equal(labels, expected)
    assert np.array_equal(image_array(colored_msg),
                          overlay(RGB, colorize_labels(expected, seg.segmenter.palette), 0.5))

    names = seg.get_parameter("class_names").value
    assert list(names) == list(seg.segmenter.class_names) and len(names) == 150
    assert not seg.set_parameters([Parameter("class_names", value=["x"])])[0].successful
    assert seg_node.LabelInfo is not None or seg.label_info_pub is None  # tested path without it

    def seg_status():
        return [s for msg in graph.received["/diagnostics"] for s in msg.status
                if s.name.startswith("/seg") and dict((kv.key, kv.value) for kv in s.values)
                .get("frames processed") == "1"]
    assert graph.spin_until(lambda: seg_status()), "no /diagnostics from /seg"
    values = {kv.key: kv.value for kv in seg_status()[-1].values}
    assert values["isr"] == "[8,4,2,1]-[1,2,4]" and values["untrained"] == "True"
    assert float(values["latency mean (ms)"]) > 0


def test_isr_ratio_set_through_the_service_applies_at_the_next_frame(ros_context, harness):
    seg = make_seg(ros_context)
    results = []
    seg.listeners.add(results.append)
    graph = harness([seg], seg_outputs())
    graph.image_pub.publish(bgr8_image(1))
    graph.next("seg/labels", 1)
    assert graph.spin_until(lambda: len(results) == 1)  # listeners run just after publishing
    assert results[-1].result.isr == ISRSetting.from_ratio(1)

    accepted = graph.set_parameter("seg", "isr_ratio", "2")
    assert accepted.successful, accepted.reason
    graph.image_pub.publish(bgr8_image(2))
    assert_header(graph.next("seg/labels", 2), 2)
    assert graph.spin_until(lambda: len(results) == 2)
    assert results[-1].result.isr == ISRSetting.from_ratio(2) == seg.segmenter.isr

    too_coarse = graph.set_parameter("seg", "isr_ratio", "3")  # 24 > the 16x16 stage-1 map
    assert not too_coarse.successful
    assert "does not fit a 64x64 input" in too_coarse.reason and "16x16" in too_coarse.reason
    zero = graph.set_parameter("seg", "isr_ratio", "0")
    assert not zero.successful and "isr_ratio" in zero.reason
    wrong_length = graph.set_parameter("seg", "isr_decoder", "[1, 2]")
    assert not wrong_length.successful and "3 values" in wrong_length.reason
    explicit = graph.set_parameter("seg", "isr_encoder", "[16, 8, 2, 1]")
    assert explicit.successful, explicit.reason
    assert seg.get_parameter("isr_ratio").value == 2

    graph.image_pub.publish(bgr8_image(3))  # still serving, with the explicit encoder
    assert_header(graph.next("seg/labels", 3), 3)
    assert graph.spin_until(lambda: len(results) == 3)
    assert results[-1].result.isr == ISRSetting((16, 8, 2, 1), (2, 4, 8))
    back = graph.set_parameter("seg", "isr_encoder", "[0]")  # `ros2 param set` cannot send []
    assert back.successful and isr_from_values(
        {"isr_ratio": 2, "isr_encoder": [0], "isr_decoder": []}) == ISRSetting.from_ratio(2)


def seg_status_values(graph, frames: int) -> dict[str, str]:
    """The newest /seg diagnostics after ``frames`` processed frames ({} before it arrives)."""
    statuses = [s for msg in graph.received["/diagnostics"] for s in msg.status if s.name.startswith("/seg")
                and {kv.key: kv.value for kv in s.values}.get("frames processed") == str(frames)]
    return {kv.key: kv.value for kv in statuses[-1].values} if statuses else {}


def test_segformer_takes_isr_ratio_live_like_edaformer(ros_context, harness):
    """Issue 20's done-when: `ros2 param set /seg isr_ratio 2` with a SegFormer network."""
    seg = make_seg(ros_context, network="segformer_b0_ade20k", diagnostics_period=0.2)
    results = []
    seg.listeners.add(results.append)
    graph = harness([seg], seg_outputs())
    assert seg.get_parameter("class_names").value[:2] == ["wall", "building"]  # ADE20K's 150 names
    graph.image_pub.publish(bgr8_image(1))
    graph.next("seg/labels", 1)
    assert graph.spin_until(lambda: len(results) == 1)
    assert results[-1].result.isr == ISRSetting((8, 4, 2, 1), ())

    accepted = graph.set_parameter("seg", "isr_ratio", "2")
    assert accepted.successful, accepted.reason
    graph.image_pub.publish(bgr8_image(2))
    labels = image_array(graph.next("seg/labels", 2))
    assert graph.spin_until(lambda: len(results) == 2)
    # every ratio the backbone can reduce x2; stage 4 (sr 1) has no reduction path and stays 1
    assert results[-1].result.isr == ISRSetting((16, 8, 4, 1), ()) == seg.segmenter.isr
    assert np.array_equal(labels, seg.segmenter.predict(RGB).labels)
    assert graph.spin_until(lambda: seg_status_values(graph, 2).get("isr") == "[16,8,4,1]"), \
        "/diagnostics does not show the served setting"

    for name, text, reason in (
            ("isr_ratio", "3", "does not fit a 64x64 input"),  # [24,12,6,1]: 24 > the 16x16 stage-1 map
            ("isr_encoder", "[16, 8, 2, 2]", "stage 4 has no key/value reduction path"),
            ("isr_encoder", "[12, 8, 2, 1]", "must be a multiple of 8"),
            ("isr_decoder", "[2, 4, 8]", "has no decoder attention")):
        refused = graph.set_parameter("seg", name, text)
        assert not refused.successful and reason in refused.reason, (name, text, refused.reason)
    assert seg.get_parameter("isr_ratio").value == 2 and seg.segmenter.isr == ISRSetting((16, 8, 4, 1), ())
    explicit = graph.set_parameter("seg", "isr_encoder", "[16, 8, 2, 1]")  # the paper's Table 7 setting
    assert explicit.successful, explicit.reason
    graph.image_pub.publish(bgr8_image(3))
    graph.next("seg/labels", 3)
    assert graph.spin_until(lambda: len(results) == 3)
    assert results[-1].result.isr == ISRSetting((16, 8, 2, 1), ())


def test_hrvit_refuses_isr_with_the_reason_and_keeps_serving(ros_context, harness):
    seg = make_seg(ros_context, network="hrvit_b1_segformer_cityscapes")
    graph = harness([seg], seg_outputs())
    refused = graph.set_parameter("seg", "isr_ratio", "2")
    assert not refused.successful
    assert "ISR does not apply to HRViT's cross-shaped stripe attention" in refused.reason
    assert seg.segmenter.inference.mode == "slide"  # Cityscapes' official test mode
    graph.image_pub.publish(bgr8_image(1))
    labels = image_array(graph.next("seg/labels", 1))
    assert labels.max() < 19 and seg.get_parameter("class_names").value[0] == "road"
    assert np.array_equal(labels, seg.segmenter.predict(RGB).labels)
    assert seg.segmenter.isr is None and seg.get_parameter("isr_ratio").value == 1


def test_latest_frame_policy_under_a_burst_of_200_frames(ros_context, harness):
    seg = make_seg(ros_context, publish_colored=False)
    graph = harness([seg], {"seg/labels": Image})
    messages = [bgr8_image(sec) for sec in range(1, 201)]
    baseline = None
    for index, msg in enumerate(messages):
        received = seg.worker.submitted
        graph.image_pub.publish(msg)
        graph.spin_until(lambda: seg.worker.submitted > received, timeout_s=1.0)
        if index == 49:
            baseline = rss_bytes()
    assert seg.worker.wait_idle(30.0)
    assert graph.spin_until(lambda: graph.received["seg/labels"] and
                            graph.received["seg/labels"][-1].header.stamp.sec == 200)
    worker = seg.worker
    assert worker.submitted >= 190  # (best effort may lose a few on the way)
    assert worker.dropped > 100 and worker.processed + worker.dropped == worker.submitted
    assert len(graph.received["seg/labels"]) == worker.processed < 100
    stamps = [msg.header.stamp.sec for msg in graph.received["seg/labels"]]
    assert stamps == sorted(stamps)
    assert rss_bytes() - baseline < 30 * 2**20, "memory grew during the burst"


@pytest.mark.parametrize("bad, reason", [
    (Image(height=4, width=4, encoding="hsv8", step=12, data=bytes(48)), "unsupported image"),
    (Image(height=0, width=0, encoding="rgb8", step=0), "empty image"),
    (Image(height=4, width=4, encoding="rgb8", step=5, data=bytes(20)), "step 5 is smaller"),
    (Image(height=4, width=4, encoding="32FC1", step=16, data=bytes(64)), "not colour"),
])
def test_bad_images_are_reported_and_the_next_frame_is_served(ros_context, harness, bad, reason):
    seg = make_seg(ros_context)
    graph = harness([seg], seg_outputs())
    bad.header = header(1)
    graph.image_pub.publish(bad)
    assert graph.spin_until(lambda: seg.diagnostics.rejected == 1)
    message = seg.warnings.last_message["bad_image"]
    assert reason in message and "(1, 7)" in message and "/image" in message
    graph.image_pub.publish(bgr8_image(2))
    assert_header(graph.next("seg/labels", 1), 2)
    assert seg.worker.failed == 0


def test_compressed_input(ros_context, harness):
    import cv2

    seg = make_seg(ros_context, compressed=True)
    graph = harness([seg], seg_outputs(), raw_input=False)
    publisher = graph.tester.create_publisher(CompressedImage, "image/compressed", RELIABLE)
    assert graph.spin_until(lambda: publisher.get_subscription_count() > 0)
    ok, png = cv2.imencode(".png", RGB[..., ::-1])
    publisher.publish(CompressedImage(header=header(4), format="png", data=png.tobytes()))
    labels = graph.next("seg/labels", 1)
    assert_header(labels, 4)
    assert np.array_equal(image_array(labels), seg.segmenter.predict(RGB).labels)


def test_label_info_message_maps_ids_to_names(monkeypatch):
    class Fake:
        def __init__(self, **fields):
            self.__dict__.update(fields)

    monkeypatch.setattr(seg_node, "LabelInfo", Fake)
    monkeypatch.setattr(seg_node, "VisionClass", Fake)
    msg = label_info_message(["road", "car"], header(1))
    assert [(c.class_id, c.class_name) for c in msg.class_map] == [(0, "road"), (1, "car")]
    monkeypatch.setattr(seg_node, "LabelInfo", None)
    with pytest.raises(RuntimeError, match="vision_msgs"):
        label_info_message(["road"], header(1))


# -- depth ----------------------------------------------------------------------------------------


def test_default_depth_is_metres_on_depth_image(ros_context, harness):
    depth = DepthNode(context=ros_context, parameter_overrides=overrides(input_size=[64, 64]))
    assert depth.estimator.network == "dpt_hybrid_nyu" and not depth.relative
    assert depth.depth_pub.topic_name == "/depth/image"
    graph = harness([depth], {"depth/image": Image})
    graph.image_pub.publish(bgr8_image(1))
    metres = image_array(graph.next("depth/image", 1, timeout_s=60.0))
    expected = depth.estimator.predict(RGB)
    assert expected.kind == "metric" and (metres > 0).all()
    np.testing.assert_allclose(metres, expected.depth, rtol=1e-5)


def test_relative_depth_is_never_published_as_metres(ros_context, harness):
    depth = DepthNode(context=ros_context, parameter_overrides=overrides(
        input_size=[64, 64], network="dpt_hybrid_midas"))
    graph = harness([depth], {"depth/relative_inverse": Image, "depth/camera_info": CameraInfo,
                              "depth/colored": Image})
    assert depth.count_publishers("/depth/image") == 0, "relative depth must not go to depth/image"
    assert "not on depth/image" in depth.output_line()
    graph.image_pub.publish(bgr8_image(1))  # no camera_info yet: depth is still published
    first = graph.next("depth/relative_inverse", 1, timeout_s=60.0)
    assert_header(first, 1)
    assert "no usable CameraInfo received" in depth.warnings.last_message["camera_info"]
    assert not graph.received["depth/camera_info"]

    graph.info_pub.publish(camera_info(2))
    assert graph.spin_until(lambda: depth._camera_info_for(header(2)) is not None)
    graph.image_pub.publish(bgr8_image(2))
    depth_msg = graph.next("depth/relative_inverse", 2, timeout_s=60.0)
    info_msg = graph.next("depth/camera_info", 1)
    colored_msg = graph.next("depth/colored", 2)
    for msg in (depth_msg, info_msg, colored_msg):
        assert_header(msg, 2)
    assert (depth_msg.encoding, colored_msg.encoding) == ("32FC1", "rgb8")
    assert (depth_msg.height, depth_msg.width, info_msg.height, info_msg.width) == (
        HEIGHT, WIDTH, HEIGHT, WIDTH)
    assert list(info_msg.k) == K

    expected = depth.estimator.predict(RGB)
    assert expected.kind == "relative_inverse" and depth.relative
    np.testing.assert_allclose(image_array(depth_msg), expected.depth, rtol=1e-5, atol=1e-6)
    first_colored = colorize_depth(expected.depth, *robust_range(expected.depth, inverse=True),
                                   inverse=True)
    assert np.array_equal(image_array(graph.received["depth/colored"][0]), first_colored)

    rejected = depth.set_parameters([Parameter("colormap", value="jet")])[0]
    assert not rejected.successful and "turbo" in rejected.reason

    # a camera_info calibrated at twice the image's size: depth/camera_info describes the image
    doubled = [2 * v if i != 8 else 1.0 for i, v in enumerate(K)]
    graph.info_pub.publish(camera_info_with_header(
        CameraInfo(width=2 * WIDTH, height=2 * HEIGHT, k=doubled), header(3)))
    assert graph.spin_until(lambda: getattr(depth._camera_info_for(header(3)), "width", 0) == 2 * WIDTH)
    graph.image_pub.publish(bgr8_image(3))
    rescaled = graph.next("depth/camera_info", 2, timeout_s=60.0)
    assert_header(rescaled, 3)
    assert (rescaled.width, rescaled.height) == (WIDTH, HEIGHT)
    np.testing.assert_allclose(np.reshape(rescaled.k, (3, 3)), scale_intrinsics(
        np.reshape(doubled, (3, 3)), (2 * WIDTH, 2 * HEIGHT), (WIDTH, HEIGHT)))
    assert "rescaled to the image" in depth.warnings.last_message["camera_info_size"]


# -- one process ----------------------------------------------------------------------------------


def test_perception_passes_depth_and_labels_to_the_cloud_in_memory(ros_context, harness):
    perception = Perception(context=ros_context, parameter_overrides=overrides(
        input_size=[64, 64], sync_timeout=10.0))  # the default depth network gives metres
    assert list(perception.cloud.subscriptions) == []  # no topic round trip for the cloud
    graph = harness(perception.nodes, {"points": PointCloud2, "seg/labels": Image,
                                       "depth/image": Image})
    graph.info_pub.publish(camera_info(5))
    assert graph.spin_until(lambda: perception.depth._camera_info_for(header(5)) is not None)
    graph.image_pub.publish(bgr8_image(5))
    cloud = graph.next("points", 1, timeout_s=60.0)
    labels = image_array(graph.next("seg/labels", 1))
    assert_header(cloud, 5)
    assert_header(graph.next("depth/image", 1), 5)
    points = np.frombuffer(bytes(cloud.data), CLOUD_DTYPE)
    assert points.size > 0 and np.isfinite(points["z"]).all()
    assert set(np.unique(points["label"])) <= set(np.unique(labels))
    assert perception.cloud.stats.incomplete == 0
    assert perception.seg.get_parameter("isr_ratio").value == 1  # each node its own parameters
    assert perception.depth.get_parameter("network").value == "dpt_hybrid_nyu"


def test_perception_options():
    options = parse_options(["--seg", "false"])
    assert (options.depth, options.seg, options.cloud) == (True, False, True)
    with pytest.raises(SystemExit):
        parse_options(["--depth", "false", "--seg", "no", "--cloud", "0"])


def test_frame_timing():
    timing = FrameTiming(window=3)
    assert timing.summary() == (0.0, 0.0, 0.0)
    for index, latency in enumerate([0.1, 0.2, 0.3, 0.4]):
        timing.record(latency, now=10.0 + 0.5 * index)
    fps, mean, worst = timing.summary()
    assert fps == pytest.approx(2.0) and mean == pytest.approx(0.3) and worst == 0.4


def test_nodes_start_from_the_packaged_config(ros_context):
    """rcl reads config/perception.yaml (wildcard sections, empty lists) and the nodes accept it."""
    config = os.path.join(os.path.dirname(__file__), "..", "config", "perception.yaml")
    cli_args = ["--ros-args", "--params-file", config]
    seg = SegNode(context=ros_context, namespace="/robot", cli_args=cli_args)
    depth = DepthNode(context=ros_context, namespace="/robot", cli_args=cli_args)
    try:
        for node in (seg, depth):
            assert node.get_parameter("input_size").value == []
            assert node.get_parameter("output_reliability").value == "reliable"
        assert seg.get_parameter("isr_encoder").type_ == Parameter.Type.INTEGER_ARRAY
        assert seg.set_parameters([Parameter("isr_encoder", value=[16, 8, 2, 1])])[0].successful
        assert depth.get_parameter("network").value == "dpt_hybrid_nyu"
    finally:
        seg.destroy_node()
        depth.destroy_node()


def test_perception_main_runs_the_chosen_nodes_and_exits_cleanly(ros_context):
    import signal

    from ros_fixtures import assert_exits_cleanly, running_executable

    code = "import sys; from dense_perception.ros.perception import main; raise SystemExit(main(sys.argv))"
    args = ["--depth", "false", "--cloud", "false", "--ros-args", "-r", "__ns:=/main_test",
            "-p", "input_size:=[64,64]"]
    with running_executable(ros_context, code, args, ("seg", "/main_test")) as (process, observer):
        assert ("depth", "/main_test") not in observer.get_node_names_and_namespaces()
        assert_exits_cleanly(process, signal.SIGINT)


def test_failed_background_isr_build_reverts_the_parameters(ros_context):
    """A fixed-shape backend whose engine build for a new ISR setting failed keeps serving the old
    setting; the node puts its parameters back to it and says why."""
    seg = make_seg(ros_context)
    serving = seg.segmenter.isr
    wanted = ISRSetting.from_ratio(2)
    assert seg.set_parameters([Parameter("isr_ratio", value=2)])[0].successful
    assert seg.segmenter.isr_control.state.requested == wanted
    seg.segmenter.isr_control.building(wanted)
    seg.segmenter.isr_control.failed(wanted, "builder ran out of memory")  # what the engine reports
    assert list(seg.get_parameter("isr_encoder").value) == list(serving.encoder)
    assert list(seg.get_parameter("isr_decoder").value) == list(serving.decoder)
    state = seg.segmenter.isr_control.state
    assert state.requested == state.served == serving and "builder ran out of memory" in state.error
    assert seg.segmenter.isr == serving
    seg.destroy_node()


def test_isr_that_stops_fitting_falls_back_and_the_parameters_follow(ros_context, harness):
    """An ISR setting accepted at one image size serves the nearest fitting setting at a size it does
    not fit, and the parameters and /diagnostics say so."""
    seg = SegNode(context=ros_context, parameter_overrides=overrides(diagnostics_period=0.2,
                                                                     publish_colored=False))
    graph = harness([seg], {"seg/labels": Image, "/diagnostics": DiagnosticArray})
    square = np.zeros((64, 64, 3), np.uint8)  # -> a 512x512 network input (ADE20K's resize)
    graph.image_pub.publish(bgr8_image(1, square))
    graph.next("seg/labels", 1, timeout_s=60.0)
    accepted = graph.set_parameter("seg", "isr_ratio", "8")  # [64,32,16,8]-[8,16,32] fits 512x512
    assert accepted.successful, accepted.reason
    wide = np.zeros((16, 1024, 3), np.uint8)  # -> 32x2048: stage-1 map 8x512, stage 4 1x64
    graph.image_pub.publish(bgr8_image(2, wide))
    graph.next("seg/labels", 2, timeout_s=60.0)
    state = seg.segmenter.isr_control.state
    nearest = ISRSetting((8, 4, 2, 1), (1, 2, 4))  # each pool cut to its feature map
    assert state.fallback and "does not fit a 32x2048 input" in state.fallback
    assert state.fallback_setting == nearest and state.served == nearest
    assert list(seg.get_parameter("isr_encoder").value) == list(nearest.encoder)
    assert list(seg.get_parameter("isr_decoder").value) == list(nearest.decoder)

    def served_on_diagnostics():
        values = [dict((kv.key, kv.value) for kv in status.values)
                  for msg in graph.received["/diagnostics"] for status in msg.status]
        return [v for v in values if v.get("isr served") == str(nearest)]
    assert graph.spin_until(served_on_diagnostics)
