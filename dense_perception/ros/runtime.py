"""Running nodes: the ``main()`` of every executable, a clean exit, and throttled warnings.

:func:`run_nodes` is the body of every executable's ``main`` (``depth``, ``seg``, ``cloud`` and the
one-process ``perception``): init, spin, and on Ctrl-C (SIGINT) or SIGTERM a clean exit with status 0
within about a second, whatever is running:

* rclpy's own signal handler shuts the context down; the executor returns (rclpy raises
  ``ExternalShutdownException``, ``KeyboardInterrupt`` or, from a waiting thread, an error on the
  invalid context: all mean "shutting down" once the context is gone).
* Each node is asked to close (:meth:`Closable.close`): inputs stop, queued frames are dropped, and
  nothing is published any more. The frame in progress is not waited for longer than
  :data:`STOP_GRACE_S` in all: a DPT frame on a CPU takes seconds, and ``ros2 launch`` escalates to
  SIGTERM after five.
* If inference or a background engine build is still running then, the process ends with
  ``os._exit`` after flushing its output, instead of letting the interpreter tear down under a
  running torch or ONNX export (which aborts: exit code -6).
* A second signal while this happens (``ros2 launch`` and the terminal both send SIGINT) ends the
  process at once, also with status 0.

A parameter file with a wrong value stops the executable with one line naming the problem and
status 1, never a traceback.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import rclpy
import rclpy.logging
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node

#: Longest time the shutdown waits for the frames in progress of all nodes together.
STOP_GRACE_S = 1.0
#: Exit status for a configuration that cannot run (bad parameter file or value).
CONFIG_ERROR = 1


@runtime_checkable
class Closable(Protocol):
    """A node with work of its own to end before ``destroy_node`` (inference workers)."""

    def close(self) -> None:
        """Stop taking input and publishing, drop queued work; do not wait."""

    def wait_closed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the work in progress; True when none is left."""


class ClosingNode(Node):
    """A node that stops publishing the moment it closes or its context shuts down.

    Work finishing on other threads after Ctrl-C (a frame in progress, a timer) goes through
    :meth:`publish`, which drops the message then instead of failing on the invalid context.
    """

    def __init__(self, node_name: str, **kwargs: object) -> None:
        super().__init__(node_name, **kwargs)
        self._closing = threading.Event()

    @property
    def closing(self) -> bool:
        """True once the node closes or its context is shut down: nothing is published any more."""
        return self._closing.is_set() or not self.context.ok()

    def publish(self, publisher: object, msg: object) -> bool:
        """Publish unless closing; a publish that loses the race with a shutdown is dropped
        silently. True when published."""
        if self.closing:
            return False
        try:
            publisher.publish(msg)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - only a shut-down context excuses a failed publish
            if self.closing:
                return False
            raise
        return True

    def close(self) -> None:
        """Stop publishing (subclasses also stop their work; never waits)."""
        self._closing.set()

    def wait_closed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for work in progress; nothing to wait for here."""
        return True

    def destroy_node(self) -> None:
        self.close()
        super().destroy_node()


class _Signals:
    """Counts SIGINT/SIGTERM; installed before ``rclpy.init`` so rclpy's handler chains to it.

    The first signal is rclpy's business (it shuts the context down and the executor returns); a
    second one ends the process at once with status 0.
    """

    def __init__(self) -> None:
        self.received = 0
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum: int, _frame: object) -> None:
        self.received += 1
        if self.received >= 2:
            exit_now(0)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def exit_now(status: int) -> None:
    """End the process immediately (no interpreter teardown) after flushing logs and output."""
    try:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(status)


def run_nodes(make_nodes: Callable[[], Sequence[Node]], args: Sequence[str] | None = None,
              threads: int = 1) -> int:
    """Create the nodes from ``make_nodes`` and spin them until shutdown; see the module docstring.

    Returns 0 after Ctrl-C/SIGTERM, :data:`CONFIG_ERROR` when the nodes cannot be made from their
    parameters (one line on stderr). ``threads`` > 1 spins a multi-threaded executor.
    """
    signals = _Signals() if threading.current_thread() is threading.main_thread() else None
    rclpy.init(args=args)
    context = rclpy.get_default_context()
    executor = MultiThreadedExecutor(num_threads=threads) if threads > 1 else SingleThreadedExecutor()
    nodes: list[Node] = []
    status = 0
    try:
        try:
            nodes = list(make_nodes())
            for node in nodes:
                executor.add_node(node)
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        except (ParameterException, ValueError) as error:
            if context.ok():
                print(f"[ERROR] {_program()}: {error}", file=sys.stderr, flush=True)
                status = CONFIG_ERROR
        except Exception:
            if context.ok():  # a real failure while running: let it show
                raise
            # else: rclpy reports a shut-down context from a waiting thread as an error
        finally:
            _shut_down(context, executor, nodes)
    except KeyboardInterrupt:  # a second Ctrl-C during the shutdown
        exit_now(0)
    if _work_still_running():
        exit_now(status)
    if signals is not None:
        signals.restore()
    return status


def _shut_down(context: rclpy.Context, executor, nodes: Sequence[Node]) -> None:
    """Close every node at once, wait for their work together, then tear down ROS."""
    closable = [node for node in nodes if isinstance(node, Closable)]
    for node in closable:
        node.close()
    deadline = time.monotonic() + STOP_GRACE_S
    for node in closable:
        node.wait_closed(max(0.0, deadline - time.monotonic()))
    executor.shutdown(timeout_sec=0.2)
    for node in nodes:
        node.destroy_node()
    rclpy.try_shutdown(context=context)


def _work_still_running() -> bool:
    """True when a thread of ours (inference, engine build) still runs after the shutdown."""
    return any(thread.is_alive() for thread in threading.enumerate()
               if thread is not threading.main_thread() and thread.daemon)


def _program() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "dense_perception"


def run_node(make_node: Callable[[], Node], args: Sequence[str] | None = None) -> int:
    """:func:`run_nodes` for one node (the ``depth``, ``seg`` and ``cloud`` executables)."""
    return run_nodes(lambda: [make_node()], args)


class _RosLogHandler(logging.Handler):
    """Python ``logging`` records → the ROS log (console, log file and ``/rosout``-capable logger of
    the same name), with the matching severity."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            logger = rclpy.logging.get_logger(record.name)
            message = self.format(record)
            if record.levelno >= logging.ERROR:
                logger.error(message)
            elif record.levelno >= logging.WARNING:
                logger.warning(message)
            elif record.levelno >= logging.INFO:
                logger.info(message)
            else:
                logger.debug(message)
        except Exception:  # noqa: BLE001 - logging must never take a node down
            self.handleError(record)


def forward_python_logging(name: str = "dense_perception") -> None:
    """Send the package's Python log records (e.g. the API's UNTRAINED warning, engine builds) to
    the ROS log instead of bare stderr. Idempotent; affects only the ``name`` logger tree."""
    logger = logging.getLogger(name)
    if any(isinstance(handler, _RosLogHandler) for handler in logger.handlers):
        return
    logger.addHandler(_RosLogHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False


class ThrottledWarnings:
    """Warnings on a node's logger, at most one per ``interval_s`` for each kind of problem.

    rclpy's own ``throttle_duration_sec`` throttles per call site, so one helper logging different
    problems would hide all but one; here each ``kind`` has its own clock. The last message of each
    kind and how often it happened are kept for diagnostics and tests. :meth:`once` logs a kind only
    the first time. Nothing is logged once the node's context is shut down (the process is ending).
    """

    def __init__(self, node: Node, interval_s: float = 5.0) -> None:
        self._node = node
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
        return self._log(kind, message, now)

    def once(self, kind: str, message: str) -> bool:
        """Log ``message`` the first time ``kind`` is reported only; True if logged."""
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.last_message[kind] = message
        if kind in self._last_logged:
            return False
        return self._log(kind, message, time.monotonic())

    def _log(self, kind: str, message: str, now: float) -> bool:
        if not self._node.context.ok():
            return False
        self._last_logged[kind] = now
        self._logger.warning(message)
        return True
