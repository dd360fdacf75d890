"""The one owner of a segmenter's ISR state: what is asked, what serves, what is being built, and why.

ISR (inference spatial reduction) is asked for by a user -- a ROS parameter, a command-line flag, a
Python call -- and served by an engine that may need to build a graph first (ONNX Runtime, TensorRT)
or may not fit every image size. :class:`ISRControl` keeps those facts together, in one place the
API, the ROS node and the offline runner all read (no coupling through log text):

* :meth:`ISRControl.request` asks the network's ISR scheme
  (:class:`~dense_perception.networks.isr.ISRScheme`, owned by the network definition: which ratios
  its attention can take) whether the setting is valid, and whether it fits the network input size
  known so far (``ValueError`` with the reason -- a pool larger than its feature map, and the size it
  needs), and records it.
* :meth:`ISRControl.target` says, for the network input size of the next frame, which setting to
  serve: the requested one, or -- when it does not fit this size -- the nearest that does
  (:meth:`~dense_perception.networks.isr.ISRScheme.nearest_fitting`), with the reason kept as
  ``fallback``.

A setting of None is an adaptive scheme's training grid (PVTv2-li); messages write it with the
scheme's :meth:`~dense_perception.networks.isr.ISRScheme.text`. Networks without ISR (no scheme) have
no ISRControl.
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

from .networks.isr import ISRScheme, ISRSetting


@dataclass(frozen=True)
class ISRState:
    """A snapshot: ``requested`` (what was asked), ``served`` (what the engine runs now),
    ``pending`` (being built, fixed-shape backends), ``fallback`` (why another setting,
    ``fallback_setting``, serves at this input size), ``error`` (the last failed build) and the
    input size it was judged at; ``text`` writes a setting for people (the scheme's form)."""

    requested: ISRSetting | None
    served: ISRSetting | None
    pending: ISRSetting | None = None
    fallback: str | None = None
    error: str | None = None
    network_size: tuple[int, int] | None = None
    #: the setting served instead of ``requested`` at this size (None when it fits)
    fallback_setting: ISRSetting | None = None
    #: whether ``pending`` is being built (``pending`` may be None: an adaptive training grid)
    building: bool = False
    text: Callable[[ISRSetting | None], str] = str

    def describe(self) -> dict[str, str]:
        """Key/values for ``/diagnostics`` and run summaries."""
        values = {"isr requested": self.text(self.requested), "isr served": self.text(self.served),
                  "isr state": "building " + self.text(self.pending) if self.building else "serving"}
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
        scheme: the network's ISR scheme: which settings are valid, and at which input sizes they run.
        listener: told of every change (any thread); must not call back into this object's
            mutating methods.
        network_size: the fixed network input size, if there is one (checked at request time).
    """

    def __init__(self, initial: ISRSetting | None, scheme: ISRScheme,
                 listener: Callable[[ISREvent], None] | None = None,
                 network_size: tuple[int, int] | None = None) -> None:
        self.scheme = scheme
        self._lock = threading.Lock()
        self.listeners: list[Callable[[ISREvent], None]] = [listener] if listener else []
        initial = scheme.validate(initial)
        self._state = ISRState(initial, initial, network_size=network_size, text=scheme.text)
        if network_size is not None and (reason := scheme.problem(initial, *network_size)):
            raise ValueError(reason)

    @property
    def state(self) -> ISRState:
        return self._state

    def request(self, setting: ISRSetting | None, by: str = "user") -> None:
        """Ask for ``setting``; ``ValueError`` (nothing changes) when the network cannot run it, or not
        at the known size. ``by`` names who asks (the event says it)."""
        setting = self.scheme.validate(setting)
        text = self.scheme.text
        with self._lock:
            size = self._state.network_size
            if size is not None and (reason := self.scheme.problem(setting, *size)):
                raise ValueError(reason)
            if setting == self._state.requested:
                return
            error = self._state.error if setting == self._state.served else None
            who = "" if by == "user" else f" by the {by}"
            event = self._change("requested", f"ISR {text(setting)} requested{who} (serving "
                                 f"{text(self._state.served)})", requested=setting, error=error)
            event = replace(event, by=by)
        self._emit(event)

    def target(self, network_size: tuple[int, int]) -> ISRSetting | None:
        """The setting to serve at ``network_size``: the requested one, or the nearest that fits."""
        text = self.scheme.text
        with self._lock:
            requested = self._state.requested
            reason = self.scheme.problem(requested, *network_size)
            fallback = None
            wanted = requested
            if reason:
                wanted = self.scheme.nearest_fitting(requested, *network_size)
                fallback = f"{reason}; serving the nearest setting that fits, {text(wanted)}"
            event = None
            if fallback != self._state.fallback:
                message = fallback or f"ISR {text(requested)} fits {network_size[0]}x{network_size[1]} again"
                event = self._change("fallback", message, network_size=network_size, fallback=fallback,
                                     fallback_setting=wanted if reason else None)
            elif network_size != self._state.network_size:
                self._state = replace(self._state, network_size=network_size)
        self._emit(event)
        return wanted

    def building(self, setting: ISRSetting | None) -> None:
        """The engine started building ``setting`` in the background (the old one keeps serving)."""
        text = self.scheme.text
        with self._lock:
            if self._state.building and self._state.pending == setting:
                return
            event = self._change("building", f"building an engine for ISR {text(setting)}; ISR "
                                 f"{text(self._state.served)} serves meanwhile", pending=setting, building=True)
        self._emit(event)

    def serving(self, setting: ISRSetting | None, backend: str = "") -> None:
        """``setting`` serves from now on (a build of it, if pending, is over)."""
        with self._lock:
            state = self._state
            building = state.building and state.pending != setting
            pending = state.pending if building else None
            if state.served == setting and building == state.building:
                return
            where = f" ({backend})" if backend else ""
            error = state.error if state.served == setting else None
            event = self._change("serving", f"ISR {self.scheme.text(setting)} serves now{where}", served=setting,
                                 pending=pending, building=building, error=error)
        self._emit(event)

    def failed(self, setting: ISRSetting | None, reason: str) -> None:
        """Building ``setting`` failed: the served setting stays and becomes the requested one."""
        text = self.scheme.text
        with self._lock:
            state = self._state
            served = state.served
            message = f"ISR {text(setting)} could not be built ({reason}); keeping ISR {text(served)}"
            building = state.building and state.pending != setting
            requested = served if state.requested == setting else state.requested
            event = self._change("failed", message, requested=requested,
                                 pending=state.pending if building else None, building=building,
                                 error=f"ISR {text(setting)}: {reason}")
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
