"""Background ISR switching for backends that bake the ISR setting into a built artefact.

TensorRT engines and ONNX Runtime sessions hold one ISR setting each. :class:`SwitchingEngine` wraps a
factory ``make(setting) -> Engine`` and serves frames with the current engine while the engine for a newly
requested setting is built in one background thread; the swap is one attribute assignment, so it happens
between two frames and a frame is never served by a half-switched engine.

Rules:

* ``infer`` reads the serving engine once per call and never waits for a build.
* ``request_isr(setting)`` returns a :class:`~concurrent.futures.Future` that resolves to ``setting`` once
  it serves. A setting already built (kept in memory) swaps at once. Otherwise the newest request is queued
  for the worker; an older queued request is dropped (its future is cancelled), so stale settings are never
  built. Going back to the serving setting cancels what is pending.
* A build that fails leaves the serving engine in place; the future carries the exception, ``status()``
  reports it, and the same setting is not rebuilt automatically on the next request (pass ``retry=True``).
* At most ``keep`` engines (serving one included) are held; older ones are released after a swap, so
  memory stays bounded however often the setting changes (the disk cache keeps them cheap to reload).
* ``prebuild(settings)`` builds settings in the background after any pending request, without swapping.

The dependency runs one way: this module reaches the backends through their factories (imported where
a factory is made); the backends never import this module.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict, deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from ..networks.isr import ISRSetting
from .base import Engine, EngineError, check_precision
from .cache import ensure_private_dir

log = logging.getLogger(__name__)

#: Makes the engine serving one ISR setting (None for networks without ISR). May take minutes.
EngineFactory = Callable[[ISRSetting | None], Engine]
#: Failed settings remembered so that a repeated request does not rebuild in a loop.
MAX_REMEMBERED_FAILURES = 16


@dataclass(frozen=True)
class ISRStatus:
    """What serves, what is being built, and the last build failure (for the ROS node and logs)."""

    serving: ISRSetting | None
    pending: ISRSetting | None
    error: str | None


@dataclass(frozen=True)
class _Serving:
    """The engine in use and its setting, swapped together as one object."""

    setting: ISRSetting | None
    engine: Engine


class SwitchingEngine:
    """An :class:`~.base.Engine` whose ISR setting switches in the background (see the module docstring).

    Args:
        make: builds (or loads from a cache) the engine for a setting.
        initial: the setting served from the start; its engine is made synchronously here.
        keep: engines held in memory at most, the serving one included (>= 1).
        prebuild: settings to build in the background from the start (``isr_prebuild``).
    """

    def __init__(self, make: EngineFactory, initial: ISRSetting | None, keep: int = 2,
                 prebuild: Iterable[ISRSetting] = ()) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self._make = make
        self._keep = int(keep)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        engine = make(initial)
        self._serving = _Serving(initial, engine)
        self._built: OrderedDict[ISRSetting | None, Engine] = OrderedDict({initial: engine})
        self._wanted: ISRSetting | None = initial
        self._queued: tuple[ISRSetting, Future] | None = None
        self._building: tuple[ISRSetting, Future] | None = None
        self._prebuild: deque[tuple[ISRSetting, Future]] = deque()
        self._failures: OrderedDict[ISRSetting, BaseException] = OrderedDict()
        self._last_error: BaseException | None = None
        self._worker: threading.Thread | None = None
        self.prebuild(prebuild)

    # ---- Engine protocol ---------------------------------------------------------------------
    @property
    def backend(self) -> str:
        return self._serving.engine.backend

    @property
    def network(self) -> str:
        return self._serving.engine.network

    @property
    def device(self) -> torch.device:
        return self._serving.engine.device

    @property
    def isr(self) -> ISRSetting | None:
        """The setting of the engine serving now (not a pending one)."""
        return self._serving.setting

    def infer(self, batch: torch.Tensor) -> Any:
        """Run the serving engine (one attribute read: a concurrent swap takes effect at the next call)."""
        return self._serving.engine.infer(batch)

    def set_isr(self, setting: ISRSetting) -> None:
        """Non-blocking :meth:`request_isr`: the switch happens when the engine is ready.

        Unlike the torch engine this does not change the setting before it returns; ``isr`` and
        :meth:`status` say what serves, and a build failure is reported there and on the future.
        """
        self.request_isr(setting)

    def describe(self) -> dict[str, Any]:
        described = dict(self._serving.engine.describe())
        status = self.status()
        if status.pending is not None:
            described["isr_pending"] = str(status.pending)
        if status.error:
            described["isr_error"] = status.error
        return described

    # ---- switching ---------------------------------------------------------------------------
    @property
    def pending(self) -> ISRSetting | None:
        """The requested setting being built or queued, if any."""
        return self.status().pending

    @property
    def last_error(self) -> BaseException | None:
        return self._last_error

    def status(self) -> ISRStatus:
        with self._lock:
            pending = self._wanted if self._wanted != self._serving.setting else None
            error = self._last_error
        return ISRStatus(self._serving.setting, pending, None if error is None else _reason(error))

    def request_isr(self, setting: ISRSetting, retry: bool = False) -> Future:
        """Switch to ``setting`` as soon as its engine is ready; the future resolves to ``setting`` when it
        serves, fails with the build's exception, or is cancelled when a newer request supersedes it."""
        with self._lock:
            if retry:
                self._failures.pop(setting, None)
            if setting == self._serving.setting:
                self._wanted = setting
                self._supersede(None)
                return _done(setting)
            if setting in self._failures:
                return _failed(self._failures[setting])
            if setting in self._built:
                self._wanted = setting
                self._supersede(None)
                self._swap(setting, self._built[setting])
                return _done(setting)
            self._wanted = setting
            if self._building is not None and self._building[0] == setting:
                if self._building[1].cancelled():  # superseded earlier, wanted again
                    self._building = (setting, Future())
                self._supersede(self._building[1])
                return self._building[1]
            if self._queued is not None and self._queued[0] == setting:
                return self._queued[1]
            future: Future = Future()
            self._supersede(None)
            self._queued = (setting, future)
            self._start_worker()
            return future

    def prebuild(self, settings: Iterable[ISRSetting]) -> list[Future]:
        """Build ``settings`` in the background (after pending requests) without swapping to them."""
        futures = []
        with self._lock:
            for setting in settings:
                future: Future = Future()
                if setting in self._built:
                    future.set_result(setting)
                else:
                    self._prebuild.append((setting, future))
                futures.append(future)
            if self._prebuild:
                self._start_worker()
        return futures

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or building (for tests, the CLI and shutdown); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._worker is None, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Drop queued work (futures cancelled) and wait for a running build to end."""
        with self._lock:
            self._supersede(None)
            while self._prebuild:
                self._prebuild.popleft()[1].cancel()
        self.wait_idle(timeout)

    @property
    def engines_held(self) -> int:
        """Engines held in memory (the serving one included); at most ``keep``."""
        with self._lock:
            return len(self._built)

    # ---- internals (call with the lock held unless noted) ------------------------------------
    def _supersede(self, keep: Future | None) -> None:
        """Cancel the futures of requests that are no longer the newest (all but ``keep``)."""
        if self._queued is not None and self._queued[1] is not keep:
            self._queued[1].cancel()
            self._queued = None
        if self._building is not None and self._building[1] is not keep:
            self._building[1].cancel()  # the build goes on; its engine is kept for a later switch

    def _swap(self, setting: ISRSetting | None, engine: Engine) -> None:
        self._serving = _Serving(setting, engine)  # the atomic switch
        self._built.move_to_end(setting)
        log.info("%s: now serving ISR %s", engine.network, setting)
        self._evict()

    def _evict(self) -> None:
        while len(self._built) > self._keep:
            oldest = next(iter(self._built))
            if oldest == self._serving.setting:  # never the serving engine
                self._built.move_to_end(oldest)
                continue
            del self._built[oldest]

    def _start_worker(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="isr-build", daemon=True)
            self._worker.start()

    def _next_job(self) -> tuple[ISRSetting, Future, bool] | None:
        """The newest request first, then prebuilds; None ends the worker."""
        if self._queued is not None:
            setting, future = self._queued
            self._queued = None
            return setting, future, True
        while self._prebuild:
            setting, future = self._prebuild.popleft()
            if not future.cancelled():
                return setting, future, False
        return None

    def _claim(self, future: Future, requested: bool) -> Future:
        """End the current build; the future to resolve (a re-request may have replaced it)."""
        if requested and self._building is not None:
            future = self._building[1]
        self._building = None
        return future

    def _work(self) -> None:
        """Worker thread: build jobs one at a time, outside the lock."""
        while True:
            with self._lock:
                job = self._next_job()
                if job is None:
                    self._worker = None
                    self._idle.notify_all()
                    return
                setting, future, requested = job
                if requested:
                    self._building = (setting, future)
                ready = self._built.get(setting)
            try:
                engine = ready if ready is not None else self._make(setting)
            except Exception as error:  # reported to the caller; the serving engine stays
                log.warning("ISR %s: build failed, keeping ISR %s: %s", setting, self._serving.setting,
                            _reason(error))
                with self._lock:
                    future = self._claim(future, requested)
                    self._last_error = error
                    self._failures[setting] = error
                    while len(self._failures) > MAX_REMEMBERED_FAILURES:
                        self._failures.popitem(last=False)
                    if self._wanted == setting:
                        self._wanted = self._serving.setting
                if not future.done():
                    future.set_exception(error)
                continue
            with self._lock:
                future = self._claim(future, requested)
                self._built[setting] = engine
                self._built.move_to_end(setting)
                swapped = requested and self._wanted == setting
                if swapped:
                    self._last_error = None
                    self._swap(setting, engine)
                else:
                    self._evict()
            if not future.done():
                future.set_result(setting)


def _reason(error: BaseException) -> str:
    return str(error).strip() or type(error).__name__


def _done(setting: ISRSetting) -> Future:
    future: Future = Future()
    future.set_result(setting)
    return future


def _failed(error: BaseException) -> Future:
    future: Future = Future()
    future.set_exception(error)
    return future


def onnxruntime_factory(net: nn.Module, height: int, width: int, folder: str | os.PathLike,
                        precision: str = "fp32", providers: Sequence[str] | None = None,
                        threads: int | None = None,
                        calibration: Sequence[str | os.PathLike] | None = None) -> EngineFactory:
    """``make(setting)`` for ONNX Runtime: the cached (or newly exported) graph for the setting, in a
    session. ``calibration``: int8 calibration images (None = the bundled sample)."""
    from .export import EXPORT_LOCK, GraphCache, private_export_copy
    from .onnx_engine import OnnxRuntimeEngine

    check_precision("onnxruntime", precision)
    graphs = GraphCache(private_export_copy(net), int(height), int(width), ensure_private_dir(folder), precision,
                        calibration=tuple(calibration) if calibration else None)

    def make(setting: ISRSetting | None) -> Engine:
        with EXPORT_LOCK:
            path = graphs(setting)
        engine = OnnxRuntimeEngine(path, providers, threads)
        if engine.isr != setting:
            raise EngineError(f"{path}: holds ISR {engine.isr}, wanted {setting}")
        return engine

    return make


def switching_engine_for_network(backend: str, net: nn.Module, height: int, width: int,
                                 folder: str | os.PathLike, precision: str = "fp32",
                                 device: str | torch.device = "cpu", initial: ISRSetting | None = None,
                                 prebuild: Iterable[ISRSetting] = (), keep: int = 2,
                                 **options: Any) -> SwitchingEngine:
    """A :class:`SwitchingEngine` of ``backend`` (``onnxruntime`` or ``tensorrt``) for one input size.

    ``initial`` None = the network's current setting. ``options`` go to the backend's factory
    (``providers``/``threads``/``calibration`` for ONNX Runtime; ``builder``, ``runtime``, ``workspace_bytes``,
    ``tick_seconds``, ``graphs_folder`` for TensorRT).
    """
    from .export import network_isr

    if backend == "onnxruntime":
        make = onnxruntime_factory(net, height, width, folder, precision, **options)
    elif backend == "tensorrt":
        from .tensorrt_engine import TensorRTFactory

        make = TensorRTFactory(net, height, width, folder, precision, device, **options)
    else:
        raise ValueError(f"no switching engine for backend {backend!r}; use onnxruntime or tensorrt")
    start = initial if initial is not None else network_isr(net)
    return SwitchingEngine(make, start, keep=keep, prebuild=[s for s in prebuild if s != start])
