"""Ctrl-C and SIGTERM end the real executables cleanly, at the moments they happen in the field.

Each test starts an installed executable (``perception``, ``depth``, ``seg``, ``cloud``: the console
scripts of this package) as ``ros2 run``/``ros2 launch`` do, streams camera frames into it from this
process over real DDS, and signals it: while it is in the middle of a DPT frame, during a background
ONNX Runtime build for a new ISR setting, twice in a row (what a terminal plus ``ros2 launch`` do),
and with SIGTERM (what ``ros2 launch`` escalates to). The process must exit with status 0 within
2 s, print no traceback and no error line, and publish nothing into a shut-down context.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.srv import SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import get_parameter_value
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_fixtures import ros_context, ros_environment, spin_until, wait_until  # noqa: F401
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from dense_perception.ros.messages import to_image_msg

#: The promise of the issue: every executable is gone this soon after the signal.
EXIT_WITHIN_S = 2.0
BIN = Path(sys.executable).parent
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
#: What a shutdown must never print: a traceback, an error, a publish into the gone context.
FORBIDDEN = ("Traceback", "[ERROR]", "Exception", "context is not valid", "context is invalid",
             "Failed to publish", "inference failed", "InvalidHandle")


def executable(name: str) -> str:
    path = BIN / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            pytest.skip(f"the {name} executable is not installed (pip install -e . installs it)")
        return found
    return str(path)


class Camera:
    """A test node streaming frames (and camera_info) at ``rate_hz`` from a thread, over real DDS."""

    def __init__(self, context, namespace: str, rate_hz: float = 10.0, size=(48, 64)) -> None:
        self.node = rclpy.create_node("fake_camera", namespace=namespace, context=context)
        self.image_pub = self.node.create_publisher(Image, "image", RELIABLE)
        self.info_pub = self.node.create_publisher(CameraInfo, "camera_info", RELIABLE)
        self.received: dict[str, int] = {}
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self._rate_hz, self._size = rate_hz, size
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def count(self, topic: str) -> None:
        """Count messages arriving on ``topic`` (relative to the namespace)."""
        self.received[topic] = 0
        self.node.create_subscription(Image, topic, lambda _m, t=topic: self._bump(t), RELIABLE)

    def _bump(self, topic: str) -> None:
        self.received[topic] += 1

    def wait_for_subscriber(self, timeout_s: float = 60.0) -> None:
        assert spin_until(self.executor, lambda: self.image_pub.get_subscription_count() > 0,
                          timeout_s), "the executable never subscribed to the image topic"

    def start(self) -> None:
        height, width = self._size
        rgb = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
        focal = float(width)
        info = CameraInfo(width=width, height=height,
                          k=[focal, 0.0, (width - 1) / 2, 0.0, focal, (height - 1) / 2, 0.0, 0.0, 1.0])

        def stream() -> None:
            index = 0
            while not self._stop.is_set():
                header = Header(frame_id="camera")
                header.stamp.sec, header.stamp.nanosec = 100 + index, 0
                info.header = header
                self.info_pub.publish(info)
                self.image_pub.publish(to_image_msg(rgb, "rgb8", header))
                index += 1
                self._stop.wait(1.0 / self._rate_hz)

        self._thread = threading.Thread(target=stream, daemon=True)
        self._thread.start()

    def spin_until(self, condition, timeout_s: float) -> bool:
        return spin_until(self.executor, condition, timeout_s)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        self.executor.shutdown()
        self.node.destroy_node()


def start(name: str, namespace: str, *ros_args: str, env: dict[str, str] | None = None
          ) -> subprocess.Popen:
    """The executable as ``ros2 run`` starts it, in its own process group, output captured
    (``env``: variables to add)."""
    command = [executable(name), "--ros-args",
               "-r", f"__ns:={namespace}", *ros_args]
    env = dict(os.environ, PYTHONUNBUFFERED="1", RCUTILS_COLORIZED_OUTPUT="0", **(env or {}))
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def signal_and_measure(process: subprocess.Popen, signals: tuple[int, ...], gap_s: float = 0.05
                       ) -> tuple[int, float, str]:
    """Send ``signals`` (``gap_s`` apart); return the exit status, seconds to exit, and the output."""
    started = time.monotonic()
    for index, signum in enumerate(signals):
        if index:
            time.sleep(gap_s)
        if process.poll() is None:
            process.send_signal(signum)
    try:
        process.wait(timeout=30.0)
    finally:
        if process.poll() is None:
            process.kill()
    elapsed = time.monotonic() - started
    return process.returncode, elapsed, process.stdout.read()


def assert_clean_exit(status: int, elapsed: float, output: str) -> None:
    assert status == 0, f"exit status {status}:\n{output}"
    assert elapsed < EXIT_WITHIN_S, f"took {elapsed:.2f} s to exit:\n{output}"
    bad = [line for line in output.splitlines() if any(word in line for word in FORBIDDEN)]
    assert not bad, "error output at shutdown:\n" + "\n".join(bad)


@pytest.fixture
def camera(ros_context, request):
    cameras: list[Camera] = []

    def make(namespace: str, **kwargs) -> Camera:
        cameras.append(Camera(ros_context, namespace, **kwargs))
        return cameras[-1]

    yield make
    for item in cameras:
        item.close()


@pytest.mark.parametrize("signals", [(signal.SIGINT,), (signal.SIGTERM,), (signal.SIGINT, signal.SIGINT)],
                         ids=["sigint", "sigterm", "double-sigint"])
def test_perception_exits_cleanly_in_the_middle_of_a_frame(camera, signals):
    """The default launch's process, streaming: depth (DPT at 480x640 on a CPU) is mid-frame."""
    namespace = f"/shutdown_{signals[0]}_{len(signals)}"
    process = start("perception", namespace)
    cam = camera(namespace)
    try:
        cam.count("seg/labels")
        cam.wait_for_subscriber()
        cam.start()
        assert cam.spin_until(lambda: cam.received["seg/labels"] >= 1, 120.0), "no labels came"
        time.sleep(0.3)  # depth is now in the middle of a frame
    except BaseException:
        process.kill()
        raise
    assert_clean_exit(*signal_and_measure(process, signals))


@pytest.mark.parametrize("name", ["depth", "seg", "cloud"])
def test_single_node_executables_exit_cleanly_while_streaming(camera, name):
    namespace = f"/shutdown_single_{name}"
    process = start(name, namespace, "-p", "input_size:=[64,64]" if name != "cloud" else "cloud_stride:=1")
    cam = camera(namespace)
    try:
        if name == "cloud":  # the cloud node listens to depth, not to the camera
            assert cam.spin_until(lambda: cam.node.count_subscribers(f"{namespace}/depth/image") > 0, 60.0)
        else:
            cam.wait_for_subscriber()
            cam.start()
            topic = "depth/image" if name == "depth" else "seg/labels"
            cam.count(topic)
            assert cam.spin_until(lambda: cam.received[topic] >= 2, 120.0), f"no {topic} came"
    except BaseException:
        process.kill()
        raise
    assert_clean_exit(*signal_and_measure(process, (signal.SIGINT,)))


def test_seg_exits_cleanly_during_a_background_isr_build(camera, ros_context):
    """ONNX Runtime: a new ISR setting is exported and built in the background when SIGINT comes."""
    namespace = "/shutdown_isr_build"
    cache = Path(os.environ.get("DENSE_PERCEPTION_CACHE", "/tmp")) / "shutdown_isr_build"
    process = start("seg", namespace, "-p", "input_size:=[128,128]", "-p", "backend:=onnxruntime",
                    "-p", f"engine_cache:={cache}")
    cam = camera(namespace)
    try:
        cam.count("seg/labels")
        cam.wait_for_subscriber(120.0)
        cam.start()
        assert cam.spin_until(lambda: cam.received["seg/labels"] >= 1, 120.0), "no labels came"
        client = cam.node.create_client(SetParameters, f"{namespace}/seg/set_parameters")
        assert cam.spin_until(client.service_is_ready, 30.0)
        future = client.call_async(SetParameters.Request(parameters=[
            ParameterMsg(name="isr_ratio", value=get_parameter_value("2"))]))
        assert cam.spin_until(future.done, 30.0) and future.result().results[0].successful
        time.sleep(0.5)  # the export of the new graph is under way (it takes seconds here)
    except BaseException:
        process.kill()
        raise
    assert_clean_exit(*signal_and_measure(process, (signal.SIGINT,)))
