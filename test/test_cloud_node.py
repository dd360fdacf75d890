"""The ``cloud`` node with real rclpy: topics, parameters through the real services, bad input,
pairing by stamp, clean exit on signals; and the sync helpers it is built on."""
from __future__ import annotations

import signal
import threading
import time

import numpy as np
import pytest
import rclpy
from builtin_interfaces.msg import Time
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.serialization import serialize_message
from ros_fixtures import (  # noqa: F401
    assert_exits_cleanly, ros_context, ros_environment, running_executable, spin_until, wait_until,
)
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header

from dense_perception.io.images import image_array
from dense_perception.pipeline.cloud import CLOUD_DTYPE, NO_LABEL, build_cloud, scale_intrinsics
from dense_perception.ros.cloud_node import CloudNode
from dense_perception.ros.messages import camera_info_with_header, to_image_msg
from dense_perception.ros.sync import LatestFrameWorker, StampMatcher

FRAME = "camera_optical_frame"
K = np.array([[10.0, 0.0, 2.5], [0.0, 12.0, 1.5], [0.0, 0.0, 1.0]])
DEPTH_M = np.array([[1.0, 2.0, np.nan, 4.0, 5.0, 6.0],
                    [1.5, 2.5, 3.5, 4.5, 5.5, 6.5],
                    [0.5, 0.0, 3.0, 4.0, 5.0, 6.0],
                    [2.0, 2.0, 2.0, 2.0, 2.0, 200.0]], np.float32)
LABELS = np.arange(24, dtype=np.uint8).reshape(4, 6)
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def header(sec: int) -> Header:
    return Header(frame_id=FRAME, stamp=Time(sec=sec, nanosec=42))


def camera_info(width: int = 6, height: int = 4, k: np.ndarray = K) -> CameraInfo:
    return CameraInfo(width=width, height=height, k=k.reshape(-1).tolist())


def decoded_points(msg) -> np.ndarray:
    return np.frombuffer(bytes(msg.data), dtype=CLOUD_DTYPE).reshape(msg.height, msg.width)


class Graph:
    """A CloudNode and a test node feeding it, on one executor spun by the test thread."""

    def __init__(self, context, with_labels: bool = True, **parameters) -> None:
        self.cloud = CloudNode(context=context, parameter_overrides=[
            Parameter(name, value=value) for name, value in parameters.items()])
        self.tester = rclpy.create_node("cloud_tester", context=context)
        self.depth_pub = self.tester.create_publisher(Image, "depth/image", RELIABLE)
        self.info_pub = self.tester.create_publisher(CameraInfo, "depth/camera_info", RELIABLE)
        self.labels_pub = (self.tester.create_publisher(Image, "seg/labels", RELIABLE)
                           if with_labels else None)
        self.clouds: list[PointCloud2] = []
        points_sub = self.tester.create_subscription(
            PointCloud2, "points", self.clouds.append, RELIABLE)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.cloud)
        self.executor.add_node(self.tester)
        publishers = [p for p in (self.depth_pub, self.info_pub, self.labels_pub) if p]
        assert spin_until(self.executor, lambda: points_sub.get_publisher_count() > 0 and all(
            p.get_subscription_count() > 0 for p in publishers)), "discovery timed out"

    def send(self, sec: int, depth_m: np.ndarray = DEPTH_M, info: CameraInfo | None = None,
             labels: np.ndarray | None = None, encoding: str = "32FC1") -> None:
        """Depth first, then camera_info and labels with the same stamp."""
        self.depth_pub.publish(to_image_msg(depth_m, encoding, header(sec)))
        if info is not None:
            self.info_pub.publish(camera_info_with_header(info, header(sec)))
        if labels is not None:
            self.labels_pub.publish(to_image_msg(labels, "mono8", header(sec)))

    def next_cloud(self, count: int, timeout_s: float = 5.0) -> PointCloud2:
        assert spin_until(self.executor, lambda: len(self.clouds) >= count, timeout_s), (
            f"no cloud #{count}; {self.cloud.stats}, {self.cloud.warnings.last_message}")
        return self.clouds[count - 1]

    def set_parameters(self, **values):
        client = AsyncParameterClient(self.tester, "cloud")
        assert client.wait_for_services(timeout_sec=5.0)
        future = client.set_parameters([Parameter(k, value=v) for k, v in values.items()])
        assert spin_until(self.executor, future.done)
        return future.result().results

    def close(self) -> None:
        self.executor.shutdown()
        self.cloud.destroy_node()
        self.tester.destroy_node()


@pytest.fixture
def make_graph(ros_context):
    graphs = []

    def make(**kwargs) -> Graph:
        graphs.append(Graph(ros_context, **kwargs))
        return graphs[-1]

    yield make
    for graph in graphs:
        graph.close()


def test_depth_camera_info_and_labels_make_a_labelled_cloud(make_graph):
    graph = make_graph(sync_timeout=5.0)  # waits for the labels, which come after the depth
    graph.send(7, info=camera_info(), labels=LABELS)
    msg = graph.next_cloud(1)

    assert msg.header.frame_id == FRAME
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (7, 42)
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("rgb", 12, 7, 1), ("label", 16, 4, 1)]
    expected = build_cloud(DEPTH_M, K, labels=LABELS, max_depth=100.0)
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 21, 20, 21 * 20)
    assert msg.is_dense and not msg.is_bigendian
    assert np.array_equal(decoded_points(msg)[0], expected)
    assert decoded_points(msg)[0]["label"][:3].tolist() == [0, 1, 3]  # pixel 2 has NaN depth

    # rosbags reads the very bytes rclpy puts on the wire to the same cloud.
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    theirs = store.deserialize_cdr(serialize_message(msg), "sensor_msgs/msg/PointCloud2")
    assert (theirs.header.frame_id, theirs.header.stamp.sec, theirs.width) == (FRAME, 7, 21)
    assert [(f.name, f.offset, f.datatype) for f in theirs.fields] == [
        (f.name, f.offset, f.datatype) for f in msg.fields]
    assert np.array_equal(np.frombuffer(theirs.data.tobytes(), CLOUD_DTYPE), expected)


def test_organized_cloud_with_camera_info_of_another_size(make_graph):
    graph = make_graph(with_labels=False, organized=True)
    K_full = scale_intrinsics(K, (6, 4), (12, 8))
    graph.send(1, info=camera_info(12, 8, K_full))
    msg = graph.next_cloud(1)
    assert (msg.height, msg.width, msg.is_dense, msg.row_step) == (4, 6, False, 6 * 20)
    points = decoded_points(msg)
    expected = build_cloud(DEPTH_M, scale_intrinsics(K_full, (12, 8), (6, 4)), organized=True,
                           max_depth=100.0)
    for name in ("x", "y", "z"):
        np.testing.assert_allclose(points[name], expected[name], rtol=1e-6, equal_nan=True)
    assert (points["label"] == NO_LABEL).all()


def test_cloud_stride_is_set_through_the_parameter_service(make_graph):
    graph = make_graph(with_labels=False)
    graph.send(1, info=camera_info())
    assert graph.next_cloud(1).width == 21

    [accepted] = graph.set_parameters(cloud_stride=2)
    assert accepted.successful
    graph.send(2, info=camera_info())
    strided = graph.next_cloud(2)
    sampled = DEPTH_M[::2, ::2]
    assert strided.width == np.count_nonzero(np.isfinite(sampled) & (sampled > 0))
    assert graph.cloud.get_parameter("cloud_stride").value == 2

    [zero] = graph.set_parameters(cloud_stride=0)
    assert not zero.successful and "cloud_stride" in zero.reason and "range" in zero.reason
    [inverted] = graph.set_parameters(min_depth=150.0)
    assert not inverted.successful and "must be below max_depth" in inverted.reason
    [read_only] = graph.set_parameters(use_labels=False)
    assert not read_only.successful and "read-only" in read_only.reason
    assert graph.cloud.settings.stride == 2 and graph.cloud.settings.min_depth == 0.0


def test_bad_depth_is_reported_and_the_next_frame_is_served(make_graph):
    graph = make_graph(with_labels=False)
    graph.send(1, depth_m=np.zeros((4, 6, 3), np.uint8), info=camera_info(), encoding="rgb8")
    assert spin_until(graph.executor, lambda: graph.cloud.stats.rejected == 1)
    assert "32FC1" in graph.cloud.warnings.last_message["bad_input"]
    graph.send(2, info=camera_info())
    assert graph.next_cloud(1).header.stamp.sec == 2


def test_depth_waits_for_camera_info_and_says_why(make_graph):
    graph = make_graph(with_labels=False)
    graph.send(3)
    assert spin_until(graph.executor, lambda: "camera_info" in graph.cloud.warnings.counts)
    assert "no CameraInfo received yet" in graph.cloud.warnings.last_message["camera_info"]
    assert not graph.clouds
    graph.info_pub.publish(camera_info_with_header(camera_info(), header(3)))
    assert graph.next_cloud(1).header.stamp.sec == 3


def test_missing_labels_wait_then_publish_or_drop(make_graph):
    graph = make_graph(sync_timeout=0.05)  # a labels publisher exists, but sends nothing
    graph.send(1, info=camera_info())
    msg = graph.next_cloud(1)
    assert (decoded_points(msg)["label"] == NO_LABEL).all() and graph.cloud.stats.incomplete == 1

    graph.cloud.set_parameters([Parameter("publish_incomplete", value=False)])
    graph.send(2, info=camera_info())
    assert spin_until(graph.executor, lambda: graph.cloud.stats.dropped == 1)
    assert len(graph.clouds) == 1


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_main_exits_cleanly_on_signals(ros_context, signum):
    name = f"cloud_signal_test_{int(signum)}"
    code = "from dense_perception.ros.cloud_node import main; raise SystemExit(main())"
    with running_executable(ros_context, code, ["--ros-args", "-r", f"__node:={name}"], (name, "/"),
                            timeout_s=15.0) as (process, _observer):
        assert_exits_cleanly(process, signum)


def test_image_messages_round_trip_through_rclpy(ros_context):
    depth_m = DEPTH_M.copy()
    msg = to_image_msg(depth_m, "32FC1", header(5))
    assert (msg.height, msg.width, msg.step, msg.encoding) == (4, 6, 24, "32FC1")
    assert np.array_equal(image_array(msg), depth_m, equal_nan=True)
    info = camera_info_with_header(camera_info(), header(5))
    assert info.header.stamp.sec == 5 and list(info.k) == K.reshape(-1).tolist()


# -- sync helpers (no ROS graph) ----------------------------------------------------------------


def test_stamp_matcher_pairs_exact_stamps_with_bounded_memory():
    matcher = StampMatcher(["depth", "labels"], capacity=2)
    for sec in (1, 2, 3):
        matcher.add("depth", (sec, 0), f"depth{sec}")
    matcher.add("labels", (2, 0), "labels2")
    assert matcher.stamps("depth") == [(2, 0), (3, 0)] and matcher.evicted["depth"] == 1
    assert matcher.get("labels", (2, 0)) == "labels2" and matcher.get("labels", (3, 0)) is None
    assert matcher.get("depth", (2, 1)) is None  # exact stamps only
    assert matcher.latest("depth") == "depth3"
    assert matcher.discard_through("depth", (2, 0)) == 1 and matcher.stamps("depth") == [(3, 0)]
    assert matcher.pop("depth", (3, 0)) == "depth3" and len(matcher) == 1


def test_latest_frame_worker_keeps_only_the_newest_item():
    release = threading.Event()
    handled: list[int] = []

    def handle(item: int) -> None:
        if item == 0:
            release.wait(5.0)  # hold the thread busy on the first item
        handled.append(item)

    with LatestFrameWorker(handle) as worker:
        worker.submit(0)
        assert wait_until(lambda: worker._busy)
        started = time.monotonic()
        replaced = [worker.submit(item) for item in range(1, 6)]
        assert time.monotonic() - started < 0.5  # submit never blocks
        assert replaced == [False, True, True, True, True]
        release.set()
        assert worker.wait_idle(5.0)
        assert handled == [0, 5] and (worker.processed, worker.dropped) == (2, 4)


def test_latest_frame_worker_survives_a_failing_handler():
    errors: list[BaseException] = []

    def handle(item: int) -> None:
        if item == 1:
            raise RuntimeError("bad frame")

    worker = LatestFrameWorker(handle, on_error=errors.append)
    worker.submit(1)
    assert worker.wait_idle(5.0)
    worker.submit(2)
    assert worker.wait_idle(5.0)
    assert worker.stop() and (worker.failed, worker.processed) == (1, 1)
    assert [str(e) for e in errors] == ["bad frame"]
    assert worker.submit(3) is False and worker.submitted == 2  # after stop: dropped, not queued
