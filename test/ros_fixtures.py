"""ROS 2 test fixtures: an isolated ROS environment per test session and an rclpy context per test.

Import the fixtures into a test module (``from ros_fixtures import ros_context, ros_environment``).
The environment keeps DDS traffic on this machine (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``),
isolates parallel runs (a random ``ROS_DOMAIN_ID``) and writes ROS logs to a scratch folder. It must
be in place before the first ``rclpy.init`` of the process, so every ROS test uses it.
"""
from __future__ import annotations

import secrets
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
