"""Pairing a depth frame with the labels and colour of the same frame, by exact stamp.

The one pairing implementation of the package: the ``cloud`` node (topics), the one-process
``perception`` executable (arrays in memory) and the offline runner all assemble a cloud's inputs
through :class:`FramePairing`. It needs no ROS.

How a frame gets its labels although depth and segmentation run at different rates: the depth side
*claims* a stamp when it starts on a frame (:meth:`FramePairing.claim`; the depth node publishes the
claim, ``depth/frame_started``), the segmentation side processes claimed frames first, and the
pairing keeps the labels and colour of claimed stamps until that depth frame is done. So what is
kept follows the real rates: nothing of a frame that no depth will come for, everything of a frame
that one will. An item can arrive before its claim -- the segmenter may be further down the camera
stream than the depth node, whose claims lag under load -- so an unclaimed item newer than every claim
is kept as long as a depth frame would wait for it (the current timeout); the ``max_unclaimed`` newest
are kept whatever their age (a depth source that sends no claims still pairs when the streams carry
the same frames); one older than a claim is dropped, as depth goes forward only.

A depth frame whose other items are not there yet waits, until they come, until their producer
says it will not make them (:meth:`FramePairing.give_up`, e.g. the segmenter skipped the frame), or
until a timeout that adapts to the lateness seen so far. Then it is released without them, with the
reason counted in :attr:`FramePairing.stats` (the nodes put it in ``/diagnostics``).
Memory is bounded: at most ``max_items`` items per stream and ``max_waiting`` waiting depth frames.
Thread-safe.
"""
from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: A stamp as a hashable, ordered key: (sec, nanosec).
StampKey = tuple[int, int]


@dataclass(frozen=True)
class PairedFrame:
    """A depth frame and what was found for it: ``items`` by stream, ``missing`` stream → reason."""

    stamp: StampKey
    depth: Any
    items: dict[str, Any]
    missing: dict[str, str]

    @property
    def complete(self) -> bool:
        return not self.missing


@dataclass
class PairingStats:
    """Counters for diagnostics: frames released complete, incomplete (by reason), items evicted."""

    complete: int = 0
    incomplete: int = 0
    missing: Counter = field(default_factory=Counter)  # "<stream>: <reason>" -> frames without it
    evicted: Counter = field(default_factory=Counter)  # stream -> items dropped to bound memory

    def summary(self) -> dict[str, Any]:
        """Flat key/values for ``/diagnostics``."""
        values: dict[str, Any] = {"frames complete": self.complete, "frames incomplete": self.incomplete}
        values.update({f"without {reason}": count for reason, count in sorted(self.missing.items())})
        values.update({f"evicted {stream}": count for stream, count in sorted(self.evicted.items())})
        return values


@dataclass
class _Waiting:
    depth: Any
    expected: tuple[str, ...]
    since: float
    gave_up: dict[str, str] = field(default_factory=dict)


class FramePairing:
    """Depth frames matched with same-stamp items of other ``streams``; see the module docstring.

    Args:
        streams: names of the other inputs (e.g. ``("labels", "color")``).
        timeout_s: shortest wait of a depth frame for late items (the wait grows to twice the
            largest lateness seen recently, up to ``max_timeout_s``).
        max_items: items kept per stream at most (claimed and unclaimed together).
        max_unclaimed: of those, items of stamps nobody claimed kept whatever their age (newest).
        max_waiting: depth frames waiting at most; the oldest is released first when full.
        clock: ``time.monotonic`` or a fake for tests.
    """

    def __init__(self, streams: Sequence[str], timeout_s: float = 1.0, max_timeout_s: float = 5.0,
                 max_items: int = 32, max_unclaimed: int = 4, max_waiting: int = 4,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if min(max_items, max_unclaimed, max_waiting) < 1 or max_unclaimed > max_items:
            raise ValueError("max_items, max_unclaimed and max_waiting must be >= 1, "
                             "max_unclaimed <= max_items")
        self.streams = tuple(streams)
        self.timeout_s = float(timeout_s)
        self.max_timeout_s = float(max_timeout_s)
        self.max_items, self.max_unclaimed, self.max_waiting = max_items, max_unclaimed, max_waiting
        self._clock = clock
        self._lock = threading.Lock()
        self._items: dict[str, OrderedDict[StampKey, Any]] = {s: OrderedDict() for s in self.streams}
        self._claimed: OrderedDict[StampKey, float] = OrderedDict()
        self._claimed_through: StampKey | None = None  # newest stamp ever claimed
        self._arrived: dict[str, dict[StampKey, float]] = {s: {} for s in self.streams}
        self._waiting: OrderedDict[StampKey, _Waiting] = OrderedDict()
        self._done_through: StampKey | None = None  # newest depth stamp released
        self._lateness = 0.0  # largest recent wait for a late item, decaying
        # (stream, stamp) of items a released frame went without -> when it began waiting
        self._released_incomplete: OrderedDict[tuple[str, StampKey], float] = OrderedDict()
        self.stats = PairingStats()

    # -- inputs -----------------------------------------------------------------------------------

    def claim(self, stamp: StampKey) -> None:
        """A depth frame with this stamp is being computed: keep its items until it is released."""
        with self._lock:
            self._claimed[stamp] = self._clock()
            while len(self._claimed) > self.max_items:
                self._claimed.popitem(last=False)
            if self._claimed_through is None or stamp > self._claimed_through:
                self._claimed_through = stamp
                for stream in self.streams:  # older unclaimed items can never be claimed now
                    self._bound(stream)

    def add(self, stream: str, stamp: StampKey, item: Any) -> list[PairedFrame]:
        """An item of ``stream``; returns depth frames it completed (at most one)."""
        with self._lock:
            if self._done_through is not None and stamp <= self._done_through and stamp not in self._waiting:
                released_waiting_since = self._released_incomplete.pop((stream, stamp), None)
                if released_waiting_since is not None:  # too late: wait longer for the next ones
                    self._note_lateness(self._clock() - released_waiting_since)
                return []  # its depth frame was released already, or will never come
            waiting = self._waiting.get(stamp)
            if waiting is not None and stream in waiting.expected:
                self._note_lateness(self._clock() - waiting.since)
            items = self._items[stream]
            items[stamp] = item
            items.move_to_end(stamp)
            self._arrived[stream][stamp] = self._clock()
            self._bound(stream)
            return self._release_ready()

    def give_up(self, stream: str, stamp: StampKey, reason: str) -> list[PairedFrame]:
        """The producer of ``stream`` will not make the item of ``stamp`` (skipped, failed)."""
        with self._lock:
            waiting = self._waiting.get(stamp)
            if waiting is None or stream not in waiting.expected:
                return []
            waiting.gave_up[stream] = reason
            return self._release_ready()

    def add_depth(self, stamp: StampKey, depth: Any, expected: Iterable[str]) -> list[PairedFrame]:
        """A finished depth frame that needs the ``expected`` streams (a subset of ``streams``).

        Returns the frames released now, in stamp order: this one when nothing is missing, and
        older waiting ones pushed out by the ``max_waiting`` bound.
        """
        expected = tuple(expected)
        unknown = set(expected) - set(self.streams)
        if unknown:
            raise ValueError(f"unknown streams {sorted(unknown)}; known: {self.streams}")
        with self._lock:
            self._waiting[stamp] = _Waiting(depth, expected, self._clock())
            released = []
            while len(self._waiting) > self.max_waiting:
                old_stamp = next(iter(self._waiting))
                released.append(self._release(old_stamp, "a newer depth frame needed the place"))
            return released + self._release_ready()

    def expire(self) -> list[PairedFrame]:
        """Release depth frames that waited longer than the current timeout (call periodically)."""
        with self._lock:
            now, timeout = self._clock(), self.current_timeout()
            late = [stamp for stamp, w in self._waiting.items() if now - w.since >= timeout]
            return [self._release(stamp, f"not received within {timeout:.2f} s") for stamp in late]

    # -- state ------------------------------------------------------------------------------------

    def current_timeout(self) -> float:
        """How long a depth frame waits now: the base timeout, or twice the recent lateness."""
        return min(self.max_timeout_s, max(self.timeout_s, 2.0 * self._lateness))

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def held(self, stream: str) -> int:
        """Items of ``stream`` held now."""
        with self._lock:
            return len(self._items[stream])

    # -- internals (lock held) ----------------------------------------------------------------------

    def _note_lateness(self, waited: float) -> None:
        self._lateness = max(waited, 0.9 * self._lateness)

    def _bound(self, stream: str) -> None:
        """Drop unclaimed items no claim can come for any more (see the module docstring), then the
        oldest beyond ``max_items``."""
        items, arrived = self._items[stream], self._arrived[stream]
        wanted = set(self._claimed) | set(self._waiting)
        unclaimed = [stamp for stamp in items if stamp not in wanted]
        oldest_kept = self._clock() - self.current_timeout()
        for stamp in unclaimed[: max(0, len(unclaimed) - self.max_unclaimed)]:
            claimable = self._claimed_through is None or stamp > self._claimed_through
            if not (claimable and arrived[stamp] > oldest_kept):
                del items[stamp], arrived[stamp]
                self.stats.evicted[stream] += 1
        while len(items) > self.max_items:
            arrived.pop(items.popitem(last=False)[0], None)
            self.stats.evicted[stream] += 1

    def _release_ready(self) -> list[PairedFrame]:
        ready = [stamp for stamp, w in self._waiting.items()
                 if all(s in w.gave_up or stamp in self._items[s] for s in w.expected)]
        return [self._release(stamp) for stamp in ready]

    def _release(self, stamp: StampKey, late_reason: str = "") -> PairedFrame:
        waiting = self._waiting.pop(stamp)
        found = {s: self._items[s].pop(stamp) for s in waiting.expected if stamp in self._items[s]}
        missing = {s: waiting.gave_up.get(s, late_reason) for s in waiting.expected if s not in found}
        for stream in self.streams:  # items of this frame or older can never pair now
            items = self._items[stream]
            for old in [key for key in items if key <= stamp and key not in self._waiting]:
                del items[old]
            arrived = self._arrived[stream]
            for old in [key for key in arrived if key not in items]:
                del arrived[old]
        for old in [key for key in self._claimed if key <= stamp and key not in self._waiting]:
            del self._claimed[old]
        if self._done_through is None or stamp > self._done_through:
            self._done_through = stamp
        if missing:
            self.stats.incomplete += 1
            for stream, reason in missing.items():
                self.stats.missing[f"{stream}: {reason}"] += 1
                self._released_incomplete[(stream, stamp)] = waiting.since
            while len(self._released_incomplete) > self.max_items:
                self._released_incomplete.popitem(last=False)
        else:
            self.stats.complete += 1
        return PairedFrame(stamp, waiting.depth, found, missing)
