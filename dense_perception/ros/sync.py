"""Pairing messages by stamp, and handing the newest frame to a worker thread.

* :class:`StampMatcher` keeps the last few messages of each stream keyed by their exact header stamp
  (bounded memory), so a node can pair depth with the labels, colour and camera_info of the same
  frame.
* :class:`LatestFrameWorker` runs a handler on one background thread with a one-item slot: a new
  item replaces one not yet started (counted as dropped), so the executor thread never blocks and
  inference never queues stale frames.

Neither needs rclpy; they live here because only the nodes use them.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
#: A header stamp as a hashable, ordered key: (sec, nanosec).
StampKey = tuple[int, int]


def stamp_key(stamp: Any) -> StampKey:
    """The key of a builtin_interfaces/Time-like object (fields ``sec``, ``nanosec``)."""
    return int(stamp.sec), int(stamp.nanosec)


class StampMatcher:
    """The last ``capacity`` items of each named stream, found by exact stamp.

    Each stream keeps its items in arrival order; adding to a full stream forgets its oldest item.
    Items also remember when they arrived (``time.monotonic()``), for bounded waits.
    Not thread-safe: use it from one thread (an executor callback group).
    """

    def __init__(self, streams: Iterable[str], capacity: int = 10) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._streams: dict[str, OrderedDict[StampKey, tuple[Any, float]]] = {
            name: OrderedDict() for name in streams}
        #: items forgotten because a stream was full, per stream
        self.evicted = {name: 0 for name in self._streams}

    def add(self, stream: str, stamp: StampKey, item: Any) -> None:
        """Store ``item`` under ``stamp`` (replacing an item with the same stamp)."""
        items = self._streams[stream]
        items.pop(stamp, None)
        items[stamp] = (item, time.monotonic())
        while len(items) > self.capacity:
            items.popitem(last=False)
            self.evicted[stream] += 1

    def get(self, stream: str, stamp: StampKey) -> Any | None:
        """The item of ``stream`` with exactly this stamp, or None."""
        entry = self._streams[stream].get(stamp)
        return None if entry is None else entry[0]

    def latest(self, stream: str) -> Any | None:
        """The most recently added item of ``stream``, or None."""
        items = self._streams[stream]
        return next(reversed(items.values()))[0] if items else None

    def arrival(self, stream: str, stamp: StampKey) -> float | None:
        """When the item of ``stream`` with this stamp arrived (``time.monotonic()``), or None."""
        entry = self._streams[stream].get(stamp)
        return None if entry is None else entry[1]

    def stamps(self, stream: str) -> list[StampKey]:
        """The stamps held for ``stream``, oldest arrival first."""
        return list(self._streams[stream])

    def pop(self, stream: str, stamp: StampKey) -> Any | None:
        """Remove and return the item of ``stream`` with this stamp (None if absent)."""
        entry = self._streams[stream].pop(stamp, None)
        return None if entry is None else entry[0]

    def discard_through(self, stream: str, stamp: StampKey) -> int:
        """Forget the items of ``stream`` stamped at or before ``stamp``; returns how many."""
        items = self._streams[stream]
        old = [key for key in items if key <= stamp]
        for key in old:
            del items[key]
        return len(old)

    def __len__(self) -> int:
        return sum(len(items) for items in self._streams.values())


class LatestFrameWorker(Generic[T]):
    """One background thread running ``handler`` on the newest submitted item.

    ``submit`` never blocks: it puts the item in a one-item slot, replacing (and counting as
    dropped) an item the thread has not started yet. ``require`` offers an item that goes before
    the newest one (a frame that another node is computing too, so that both results exist for it);
    a newer required item replaces an older one not yet started. An exception from ``handler`` goes
    to ``on_error`` (if given; it is counted in ``failed`` either way) and the thread goes on.
    ``on_skipped(item, reason)`` hears of every required item that was not handled (replaced,
    failed, or dropped at stop) and of every failed item.
    """

    def __init__(self, handler: Callable[[T], None], name: str = "latest-frame-worker",
                 on_error: Callable[[BaseException], None] | None = None,
                 on_skipped: Callable[[T, str], None] | None = None) -> None:
        self._handler = handler
        self._on_error = on_error
        self._on_skipped = on_skipped
        self._condition = threading.Condition()
        self._slot: list[T] = []  # zero or one item
        self._required: list[T] = []  # zero or one item, handled before the slot's
        self._busy = False
        self._stopping = False
        self.submitted = 0
        self.processed = 0
        self.dropped = 0
        self.failed = 0
        #: required items that were replaced or dropped before they were handled
        self.required_dropped = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: T) -> bool:
        """Offer ``item``; True if it replaced a waiting item (which is then dropped).
        After :meth:`stop` the item is dropped (False)."""
        with self._condition:
            if self._stopping:
                return False
            replaced = bool(self._slot)
            self._slot[:] = [item]
            self.submitted += 1
            self.dropped += replaced
            self._condition.notify_all()
        return replaced

    def require(self, item: T) -> None:
        """Offer ``item`` to be handled next, before the newest submitted one."""
        with self._condition:
            if self._stopping:
                skipped = [item]
            else:
                skipped, self._required[:] = list(self._required), [item]
                self.required_dropped += len(skipped)
                self._condition.notify_all()
        for old in skipped:
            self._skipped(old, "a newer frame was required first")

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until the slots are empty and no item is being handled; False on timeout."""
        with self._condition:
            return self._condition.wait_for(
                lambda: not self._slot and not self._required and not self._busy, timeout)

    def stop(self, timeout: float | None = 1.0) -> bool:
        """Stop after the item being handled (waiting ones are dropped); False if the handler
        still runs after ``timeout`` (the thread is a daemon and ends with it)."""
        with self._condition:
            self._stopping = True
            self.dropped += len(self._slot)
            self._slot.clear()
            skipped, self._required[:] = list(self._required), []
            self._condition.notify_all()
        for item in skipped:
            self._skipped(item, "the node is shutting down")
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def __enter__(self) -> LatestFrameWorker[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _skipped(self, item: T, reason: str) -> None:
        if self._on_skipped is not None:
            self._on_skipped(item, reason)

    def _run(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._slot or self._required or self._stopping)
                if self._stopping:
                    return
                item = (self._required or self._slot).pop()
                self._busy = True
            try:
                self._handler(item)
                succeeded = True
            except Exception as error:  # noqa: BLE001 - the worker must outlive a bad frame
                succeeded = False
                if self._on_error is not None:
                    self._on_error(error)
                self._skipped(item, f"{type(error).__name__}: {error}")
            with self._condition:
                self._busy = False
                self.processed += succeeded
                self.failed += not succeeded
                self._condition.notify_all()
