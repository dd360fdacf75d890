"""The one owner of a segmenter's ISR state: what is asked, what serves, what is being built, and why.

ISR (inference spatial reduction) is asked for by a user -- a ROS parameter, a command-line flag, a
Python call -- and served by an engine that may need to build a graph first (ONNX Runtime, TensorRT)
or may not fit every image size. :class:`ISRControl` keeps those facts together, in one place the
API, the ROS node and the offline runner all read (no coupling through log text):

* :meth:`ISRControl.request` validates a setting against the network input size known so far
  (``ValueError`` with the reason when a pool would exceed its feature map) and records it.
* :meth:`ISRControl.target` says, for the network input size of the next frame, which setting to
  serve: the requested one, or -- when it does not fit this size -- the nearest that does
  (:func:`~dense_perception.networks.isr.nearest_fitting`), with the reason kept as ``fallback``.
* :meth:`ISRControl.building`, :meth:`ISRControl.serving` and :meth:`ISRControl.failed` are told by the
  engine side what happened; a failed build keeps the setting that served and makes it the requested
  one again, with the reason as ``error``.

Every change is reported once to the listener as an :class:`ISREvent` (the node logs it, and puts the
ROS parameters back in line with what serves). Thread-safe; no ROS, no torch.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

from .networks.isr import ISRSetting

#: Why a setting cannot run at a network input size (None when it can).
ProblemCheck = Callable[[ISRSetting, int, int], "str | None"]
#: The nearest setting that runs at a network input size.
NearestFitting = Callable[[ISRSetting, int, int], ISRSetting]


@dataclass(frozen=True)
class ISRState:
    """A snapshot: ``requested`` (what was asked), ``served`` (what the engine runs now),
    ``pending`` (being built, fixed-shape backends), ``fallback`` (why another setting,
    ``fallback_setting``, serves at this input size), ``error`` (the last failed build) and the
    input size it was judged at."""

    requested: ISRSetting
    served: ISRSetting
    pending: ISRSetting | None = None
    fallback: str | None = None
    error: str | None = None
    network_size: tuple[int, int] | None = None
    #: the setting served instead of ``requested`` at this size (None when it fits)
    fallback_setting: ISRSetting | None = None

    @property
    def building(self) -> bool:
        return self.pending is not None

    def describe(self) -> dict[str, str]:
        """Key/values for ``/diagnostics`` and run summaries."""
        values = {"isr requested": str(self.requested), "isr served": str(self.served),
                  "isr state": "building " + str(self.pending) if self.pending else "serving"}
        if self.fallback:
            values["isr fallback"] = self.fallback
        if self.error:
            values["isr error"] = self.error
        return values


@dataclass(frozen=True)
class ISREvent:
    """One change: ``kind`` is ``requested``, ``building``, ``serving``, ``fallback`` or ``failed``;
    ``message`` says it in one line; ``state`` is the state after it; ``by`` who asked (``user``, or
    ``governor`` for the frame budget's choices)."""

    kind: str
    message: str
    state: ISRState
    by: str = "user"


class ISRControl:
    """See the module docstring.

    Args:
        initial: the setting asked for and served from the start.
        problem: why a setting cannot run at an input size (the network family's rule).
        nearest: the nearest setting that runs at an input size.
        listener: told of every change (any thread); must not call back into this object's
            mutating methods.
        network_size: the fixed network input size, if there is one (checked at request time).
    """

    def __init__(self, initial: ISRSetting, problem: ProblemCheck, nearest: NearestFitting,
                 listener: Callable[[ISREvent], None] | None = None,
                 network_size: tuple[int, int] | None = None) -> None:
        self._problem, self._nearest = problem, nearest
        self._lock = threading.Lock()
        self.listeners: list[Callable[[ISREvent], None]] = [listener] if listener else []
        self._state = ISRState(initial, initial, network_size=network_size)
        if network_size is not None and (reason := problem(initial, *network_size)):
            raise ValueError(reason)

    @property
    def state(self) -> ISRState:
        return self._state

    def request(self, setting: ISRSetting, by: str = "user") -> None:
        """Ask for ``setting``; ``ValueError`` (nothing changes) when it cannot run at the known size.
        ``by`` names who asks (the event says it)."""
        with self._lock:
            size = self._state.network_size
            if size is not None and (reason := self._problem(setting, *size)):
                raise ValueError(reason)
            if setting == self._state.requested:
                return
            error = self._state.error if setting == self._state.served else None
            who = "" if by == "user" else f" by the {by}"
            event = self._change("requested", f"ISR {setting} requested{who} (serving {self._state.served})",
                                 requested=setting, error=error)
            event = replace(event, by=by)
        self._emit(event)

    def target(self, network_size: tuple[int, int]) -> ISRSetting:
        """The setting to serve at ``network_size``: the requested one, or the nearest that fits."""
        with self._lock:
            requested = self._state.requested
            reason = self._problem(requested, *network_size)
            fallback = None
            wanted = requested
            if reason:
                wanted = self._nearest(requested, *network_size)
                fallback = f"{reason}; serving the nearest setting that fits, {wanted}"
            event = None
            if fallback != self._state.fallback:
                message = fallback or f"ISR {requested} fits {network_size[0]}x{network_size[1]} again"
                event = self._change("fallback", message, network_size=network_size, fallback=fallback,
                                     fallback_setting=wanted if reason else None)
            elif network_size != self._state.network_size:
                self._state = replace(self._state, network_size=network_size)
        self._emit(event)
        return wanted

    def building(self, setting: ISRSetting) -> None:
        """The engine started building ``setting`` in the background (the old one keeps serving)."""
        with self._lock:
            if self._state.pending == setting:
                return
            event = self._change("building", f"building an engine for ISR {setting}; ISR "
                                 f"{self._state.served} serves meanwhile", pending=setting)
        self._emit(event)

    def serving(self, setting: ISRSetting, backend: str = "") -> None:
        """``setting`` serves from now on (a build of it, if pending, is over)."""
        with self._lock:
            state = self._state
            pending = None if state.pending in (None, setting) else state.pending
            if state.served == setting and pending == state.pending:
                return
            where = f" ({backend})" if backend else ""
            error = state.error if state.served == setting else None
            event = self._change("serving", f"ISR {setting} serves now{where}", served=setting,
                                 pending=pending, error=error)
        self._emit(event)

    def failed(self, setting: ISRSetting, reason: str) -> None:
        """Building ``setting`` failed: the served setting stays and becomes the requested one."""
        with self._lock:
            served = self._state.served
            message = f"ISR {setting} could not be built ({reason}); keeping ISR {served}"
            pending = None if self._state.pending in (None, setting) else self._state.pending
            requested = served if self._state.requested == setting else self._state.requested
            event = self._change("failed", message, requested=requested, pending=pending,
                                 error=f"ISR {setting}: {reason}")
        self._emit(event)

    # -- internals ----------------------------------------------------------------------------------

    def _change(self, kind: str, message: str, **changes: object) -> ISREvent:
        self._state = replace(self._state, **changes)  # type: ignore[arg-type]
        return ISREvent(kind, message, self._state)

    def _emit(self, event: ISREvent | None) -> None:
        if event is None:
            return
        for listener in list(self.listeners):
            listener(event)
