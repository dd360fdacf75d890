"""ROS 2 test fixtures: an isolated ROS environment per test session and an rclpy context per test.

Import the fixtures into a test module (``from ros_fixtures import ros_context, ros_environment``).
The environment keeps DDS traffic on this machine (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``),
isolates parallel runs (a random ``ROS_DOMAIN_ID``) and writes ROS logs to a scratch folder. It must
be in place before the first ``rclpy.init`` of the process, so every ROS test uses it.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest


@pytest.fixture(scope="session")
def ros_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Environment variables for ROS 2 in tests (also what a child process must inherit)."""
    settings = {
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_DOMAIN_ID": str(1 + secrets.randbelow(200)),  # 0..232 are valid with Fast DDS
        "ROS_LOG_DIR": str(tmp_path_factory.mktemp("ros_log")),
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in settings.items():
            patch.setenv(name, value)
        yield settings


@pytest.fixture
def ros_context(ros_environment: dict[str, str]):
    """An initialised rclpy context of its own, shut down after the test."""
    import rclpy

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        rclpy.try_shutdown(context=context)


def spin_until(executor, condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """Spin ``executor`` until ``condition()`` holds; False if it did not within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        executor.spin_once(timeout_sec=0.01)
    return True


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0, poll_s: float = 0.01) -> bool:
    """Poll ``condition()`` (no executor involved) until it holds; False on timeout."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True


@contextlib.contextmanager
def running_executable(context, code: str, args: list[str], node: tuple[str, str],
                       timeout_s: float = 20.0) -> Iterator[tuple[subprocess.Popen, object]]:
    """Run ``python -c code *args`` in a subprocess until the ROS graph shows ``node`` (name,
    namespace); yield the process and an observer node; kill the process if it still runs after."""
    process = subprocess.Popen([sys.executable, "-c", code, *args], env=os.environ.copy(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    import rclpy

    observer = rclpy.create_node("executable_observer", context=context)
    try:
        assert wait_until(lambda: node in observer.get_node_names_and_namespaces(), timeout_s), (
            process.poll(), process.stdout.read() if process.poll() is not None else "")
        yield process, observer
    finally:
        observer.destroy_node()
        if process.poll() is None:
            process.kill()
            process.wait()


def assert_exits_cleanly(process: subprocess.Popen, signum: int, timeout_s: float = 10.0) -> None:
    """Send ``signum``; the process must exit with status 0."""
    process.send_signal(signum)
    assert process.wait(timeout=timeout_s) == 0, process.stdout.read()
