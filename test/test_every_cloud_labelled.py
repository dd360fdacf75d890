"""Every point cloud carries the labels of its own frame, in one process and between processes.

A camera streams faster than either network runs, and segmentation runs faster than depth (as on a
robot: EDAFormer-T is several times faster than DPT-Hybrid): each node drops frames independently, so
without coordination most depth frames have no labels of the same stamp. Here the real nodes run (in
this process as the ``perception`` executable builds them, and as three separate executables), and
once both depth and labels flow (from the first labelled cloud on) every cloud that comes out must be
labelled -- each point's label a class id, none :data:`~dense_perception.pipeline.cloud.NO_LABEL` --
with the cloud node's counters agreeing.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_fixtures import ros_context, ros_environment, spin_until  # noqa: F401
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header

from dense_perception.pipeline.cloud import CLOUD_DTYPE, NO_LABEL
from dense_perception.ros.messages import to_image_msg
from dense_perception.ros.perception import Perception

from test_shutdown import signal_and_measure, start

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
HEIGHT, WIDTH = 48, 64
CLOUDS = 8
#: Depth's network input: slower than segmentation's 64x64, as DPT is slower than EDAFormer-T.
DEPTH_SIZE = (192, 256)


class Stream:
    """A camera at ``rate_hz`` and a recorder of ``points`` and ``/diagnostics``, on one node."""

    def __init__(self, context, namespace: str = "", rate_hz: float = 30.0) -> None:
        self.node = rclpy.create_node("camera_and_recorder", namespace=namespace, context=context)
        self.image_pub = self.node.create_publisher(Image, "image", RELIABLE)
        self.info_pub = self.node.create_publisher(CameraInfo, "camera_info", RELIABLE)
        self.clouds: list[PointCloud2] = []
        self.diagnostics: list[DiagnosticArray] = []
        self.flowing: dict[str, int] = {"depth/image": 0, "seg/labels": 0}
        self.node.create_subscription(PointCloud2, "points", self._cloud, RELIABLE)
        for topic in self.flowing:
            self.node.create_subscription(Image, topic, lambda _m, t=topic: self._flow(t), RELIABLE)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)
        self.rate_hz = rate_hz
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._stream, daemon=True)
        self.sent = 0

    def _flow(self, topic: str) -> None:
        self.flowing[topic] += 1

    def _cloud(self, cloud: PointCloud2) -> None:
        # Both streams flow, and have reached the cloud node: from its first labelled cloud on, every
        # cloud counts. (Before, a message published while the cloud node's subscriptions were still
        # being matched is lost, as DDS drops volatile messages for readers not yet discovered.)
        if self.clouds or (all(self.flowing.values()) and unlabelled_points(cloud) == 0):
            self.clouds.append(cloud)

    def _stream(self) -> None:
        rng = np.random.default_rng(1)
        info = CameraInfo(width=WIDTH, height=HEIGHT, k=[50.0, 0, 31.5, 0, 50.0, 23.5, 0, 0, 1])
        while not self._stop.is_set():
            header = Header(frame_id="camera")
            header.stamp.sec, header.stamp.nanosec = 1000 + self.sent // 30, (self.sent % 30) * 10_000_000
            info.header = header
            self.info_pub.publish(info)
            rgb = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
            self.image_pub.publish(to_image_msg(rgb, "rgb8", header))
            self.sent += 1
            self._stop.wait(1.0 / self.rate_hz)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)


def unlabelled_points(cloud: PointCloud2) -> int:
    points = np.frombuffer(bytes(cloud.data), CLOUD_DTYPE)
    assert points.size > 0
    return int(np.count_nonzero(points["label"] == NO_LABEL))


def cloud_status(stream: Stream) -> dict[str, str]:
    statuses = [dict((kv.key, kv.value) for kv in status.values)
                for msg in stream.diagnostics for status in msg.status if status.name.endswith(": cloud")]
    return statuses[-1] if statuses else {}


def test_one_process_labels_every_cloud(ros_context):
    sizes = ["--ros-args", "-p", f"depth:input_size:={list(DEPTH_SIZE)}", "-p", "seg:input_size:=[64,64]"]
    perception = Perception(context=ros_context, cli_args=sizes, parameter_overrides=[
        Parameter("publish_colored", value=False), Parameter("diagnostics_period", value=0.2)])
    assert perception.depth.estimator.input_size == DEPTH_SIZE  # depth slower than segmentation
    stream = Stream(ros_context)
    executor = MultiThreadedExecutor(num_threads=2, context=ros_context)
    for node in perception.nodes + [stream.node]:
        executor.add_node(node)
    try:
        assert spin_until(executor, lambda: stream.image_pub.get_subscription_count() >= 2, 20.0)
        stream.start()
        assert spin_until(executor, lambda: len(stream.clouds) >= CLOUDS, 120.0), (
            f"{len(stream.clouds)} clouds; {perception.cloud.stats}")
        stream.stop()
        seg_skipped = perception.seg.worker.dropped
        assert seg_skipped > 0 or perception.depth.worker.dropped > 0, "the camera must outrun the nodes"
        assert [unlabelled_points(cloud) for cloud in stream.clouds] == [0] * len(stream.clouds)
        assert spin_until(executor, lambda: int(cloud_status(stream).get("clouds published", "0")) >= CLOUDS,
                          10.0)
        counted_without = int(cloud_status(stream)["clouds without colour or labels"])
        assert counted_without == perception.cloud.stats.incomplete  # /diagnostics tells the truth
    finally:
        stream.stop()
        executor.shutdown()
        perception.destroy()
        stream.node.destroy_node()


def test_separate_processes_label_every_cloud(ros_context):
    """``single_process:=false``: depth, seg and cloud as three executables, pairing over topics."""
    namespace = "/every_cloud"
    small = ("-p", "publish_colored:=false")
    # One intra-op thread per network process, as a robot gives each node its cores: on this 2-core
    # machine two torch processes of 2 threads each starve one another (a 64x64 segmentation then
    # takes seconds, slower than depth, and no pairing can label every cloud).
    one_core = {"OMP_NUM_THREADS": "1"}
    processes = [start("depth", namespace, "-p", f"input_size:={list(DEPTH_SIZE)}", *small, env=one_core),
                 start("seg", namespace, "-p", "input_size:=[64,64]", *small, env=one_core),
                 start("cloud", namespace, "-p", "diagnostics_period:=0.2")]
    stream = Stream(ros_context, namespace)
    executor = MultiThreadedExecutor(num_threads=2, context=ros_context)
    executor.add_node(stream.node)
    try:
        assert spin_until(executor, lambda: stream.image_pub.get_subscription_count() >= 3
                          and stream.node.count_publishers(f"{namespace}/points") > 0, 120.0), (
            "the executables did not come up")
        time.sleep(1.0)  # let the nodes discover each other too
        stream.start()
        assert spin_until(executor, lambda: len(stream.clouds) >= CLOUDS, 180.0), (
            f"{len(stream.clouds)} clouds")
        stream.stop()
        unlabelled = [unlabelled_points(cloud) for cloud in stream.clouds]
        assert unlabelled == [0] * len(unlabelled), f"clouds without labels: {unlabelled}"
        assert spin_until(executor, lambda: int(cloud_status(stream).get("clouds published", "0")) >= CLOUDS,
                          10.0), cloud_status(stream)
    finally:
        stream.stop()
        for process in processes:
            if process.poll() is None:
                status, _elapsed, output = signal_and_measure(process, (2,))
                print(f"--- {process.args[0]} (exit {status}):\n{output}")  # shown when the test fails
                assert status == 0, output
        executor.shutdown()
        stream.node.destroy_node()
