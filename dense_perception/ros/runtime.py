"""Running a node: ``main()`` plumbing and throttled warnings.

:func:`run_node` is the body of every executable's ``main``: init, spin, and a clean exit (status 0)
on Ctrl-C or SIGTERM, which rclpy reports as ``KeyboardInterrupt`` or ``ExternalShutdownException``.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node


def run_node(make_node: Callable[[], Node], args: Sequence[str] | None = None) -> int:
    """Create the node from ``make_node`` and spin it until shutdown; returns the exit status 0."""
    rclpy.init(args=args)
    node: Node | None = None
    try:
        node = make_node()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


class ThrottledWarnings:
    """Warnings on a node's logger, at most one per ``interval_s`` for each kind of problem.

    rclpy's own ``throttle_duration_sec`` throttles per call site, so one helper logging different
    problems would hide all but one; here each ``kind`` has its own clock. The last message of each
    kind and how often it happened are kept for diagnostics and tests.
    """

    def __init__(self, node: Node, interval_s: float = 5.0) -> None:
        self._logger = node.get_logger()
        self._interval_s = interval_s
        self._last_logged: dict[str, float] = {}
        #: how many times each kind was reported (logged or throttled)
        self.counts: dict[str, int] = {}
        #: the last message of each kind
        self.last_message: dict[str, str] = {}

    def warn(self, kind: str, message: str) -> bool:
        """Log ``message`` unless ``kind`` was logged within ``interval_s``; True if logged."""
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.last_message[kind] = message
        now = time.monotonic()
        last = self._last_logged.get(kind)
        if last is not None and now - last < self._interval_s:
            return False
        self._last_logged[kind] = now
        self._logger.warning(message)
        return True
