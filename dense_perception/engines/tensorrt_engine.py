"""The TensorRT engine (TensorRT 10.x, as on JetPack 6, and 11.x): the only module that imports ``tensorrt``.

Three small pieces, each replaceable by a fake with the same interface (the tests do), all working on one
:class:`~.cuda_device.CudaDevice`: every TensorRT call that touches the GPU (build, deserialize, context
creation, enqueue, release) runs with that device entered (``torch.cuda.device(index)``), so an engine for
``cuda:1`` is built, loaded and run on GPU 1 whatever the caller's current device is.

* :class:`TensorRTBuilder` -- exported ONNX bytes -> serialized engine. Always a *strongly typed* network
  (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``; the default and only mode in 11.x): precision comes
  from the graph, so fp16 is built from the fp16 ONNX of :func:`~.export.export_onnx` (LayerNorm, softmax,
  reductions kept in fp32 there) and the deprecated ``BuilderFlag.FP16`` is never used; fp32 engines also
  clear TF32. Workspace limit (``MemoryPoolType.WORKSPACE``), a timing cache persisted in the engine cache
  (one TensorRT refuses -- ``set_timing_cache`` returns False for another version or device -- is dropped
  with a warning and the build starts from an empty one), and progress on the ``logging`` logger: a start
  line, an elapsed-time line every ``tick_seconds`` from a ticker thread, the top-level builder phases
  (``IProgressMonitor``, where the library has it), and the final size and time.
* :class:`TensorRTRuntime` -- serialized engine -> :class:`TensorRTExecution`, which runs with named
  tensors: the pre-processed torch CUDA tensor's ``data_ptr()`` is the input address (TensorRT wants
  256-byte aligned addresses: an input view that is not is copied first), the output is a torch tensor
  allocated on the same device, and every address TensorRT refuses raises. ``execute_async_v3`` runs on a
  CUDA stream the execution owns (never the legacy default stream, on which TensorRT adds
  synchronisations of its own): that stream first waits for the caller's current stream, where the input
  was produced, and is synchronised once per frame before ``run`` returns, so the output is ready for any
  stream and no enqueue is ever pending when the execution context is released (release synchronises
  too). One frame at a time per execution (the context holds the addresses).
* :class:`TensorRTFactory` -- ``make(setting)`` for :class:`~.switching.SwitchingEngine`: engine cache
  (:mod:`.cache`) first, else export ONNX, build and store; a cached engine TensorRT refuses to
  deserialize is removed and rebuilt. The dependency runs one way: :mod:`.switching` uses this factory,
  this module never imports :mod:`.switching`.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import torch
from torch import nn

from ..networks.isr import ISRSetting
from .base import EngineError, check_precision
from .cache import CacheKey, EngineCache, TimingCacheKey
from .cuda_device import Device, as_device
from .export import EXPORT_LOCK, INPUT_NAME, MIN_OPSET, GraphCache, graph_info, private_export_copy

log = logging.getLogger(__name__)

LIBRARY = "tensorrt"
#: Builder workspace limit (scratch memory for tactics), bytes.
DEFAULT_WORKSPACE = 1 << 30
#: Seconds between "still building" lines.
DEFAULT_TICK = 30.0
#: Alignment TensorRT requires of every I/O tensor address (``IExecutionContext::setTensorAddress``).
TENSOR_ALIGNMENT = 256
MISSING = ("the tensorrt backend needs NVIDIA TensorRT and a CUDA GPU; TensorRT is not installed "
           "(it comes from NVIDIA's package index -- pip install tensorrt --extra-index-url "
           "https://pypi.nvidia.com -- or with JetPack on Jetson)")


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or EngineError saying how to get it."""
    try:
        import tensorrt
    except ImportError:
        raise EngineError(MISSING) from None
    return tensorrt


def tensorrt_available() -> bool:
    try:
        import_tensorrt()
    except EngineError:
        return False
    return True


class Builder(Protocol):
    """What :class:`TensorRTFactory` needs from a builder."""

    version: str

    def build(self, onnx_model: bytes, precision: str, label: str, device: Device) -> bytes: ...


class Execution(Protocol):
    """One deserialized engine, ready to run."""

    def run(self, batch: torch.Tensor) -> torch.Tensor: ...

    def close(self) -> None: ...


class Runtime(Protocol):
    """What :class:`TensorRTFactory` needs from a runtime."""

    def load(self, serialized: bytes) -> Execution: ...


# ---- progress ------------------------------------------------------------------------------------
class BuildProgress:
    """``with BuildProgress(label, tick):`` logs a start line, then elapsed time every ``tick`` seconds
    from a daemon thread until the block ends; ``elapsed`` is the block's duration."""

    def __init__(self, label: str, tick: float = DEFAULT_TICK) -> None:
        self.label, self.tick = label, float(tick)
        self.elapsed = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0.0

    def __enter__(self) -> "BuildProgress":
        self._start = time.monotonic()
        log.info("building TensorRT engine %s; this can take several minutes (once per setting: it is cached)",
                 self.label)
        self._thread = threading.Thread(target=self._ticker, name="trt-build-progress", daemon=True)
        self._thread.start()
        return self

    def _ticker(self) -> None:
        while not self._stop.wait(self.tick):
            log.info("still building TensorRT engine %s: %.0f s elapsed", self.label, time.monotonic() - self._start)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.elapsed = time.monotonic() - self._start


def _progress_monitor(trt: ModuleType, label: str) -> Any | None:
    """An ``IProgressMonitor`` logging top-level phases (TensorRT >= 10.0), else None."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class PhaseLogger(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None:
                log.info("TensorRT engine %s: %s (%d steps)", label, phase_name, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            pass

    return PhaseLogger()


# ---- builder -------------------------------------------------------------------------------------
class TensorRTBuilder:
    """ONNX bytes -> serialized engine (see the module docstring).

    Args:
        workspace_bytes: ``MemoryPoolType.WORKSPACE`` limit.
        cache: where the timing cache is read from and written to (None = no timing cache).
        tick_seconds: period of the "still building" lines.
        trt: the ``tensorrt`` module (None = import it); tests pass a fake.
    """

    def __init__(self, workspace_bytes: int = DEFAULT_WORKSPACE, cache: EngineCache | None = None,
                 tick_seconds: float = DEFAULT_TICK, trt: ModuleType | None = None) -> None:
        self.trt = trt or import_tensorrt()
        self.workspace_bytes = int(workspace_bytes)
        self.cache = cache
        self.tick_seconds = tick_seconds
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)

    @property
    def version(self) -> str:
        return str(self.trt.__version__)

    def build(self, onnx_model: bytes, precision: str, label: str, device: Device) -> bytes:
        """Parse, configure and build on ``device``; EngineError with the parser's or builder's reason on
        failure."""
        check_precision("tensorrt", precision)
        gpu = device.gpu()
        timing_key = TimingCacheKey(LIBRARY, self.version, gpu.name, gpu.compute_capability)
        with device.scope():
            engine, timing = self._build(onnx_model, precision, label, timing_key)
        if self.cache is not None and timing is not None:
            self.cache.write(timing_key, timing)
        return engine

    def _build(self, onnx_model: bytes, precision: str, label: str,
               timing_key: TimingCacheKey) -> tuple[bytes, bytes | None]:
        """The serialized engine and the timing cache to keep (None when TensorRT gives none back)."""
        trt = self.trt
        builder = trt.Builder(self.logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(onnx_model):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(f"TensorRT's ONNX parser refused the graph for {label}: {errors or 'no reason given'}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_bytes)
        if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32 (TF32 matmuls drift ~1e-3)
        self._attach_timing_cache(config, timing_key)
        monitor = _progress_monitor(trt, label)
        if monitor is not None:
            config.progress_monitor = monitor
        with BuildProgress(label, self.tick_seconds) as progress:
            serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise EngineError(f"TensorRT could not build {label} (see TensorRT's messages above)")
        engine = bytes(serialized)
        log.info("built TensorRT engine %s: %.1f MB in %.1f s", label, len(engine) / 1e6, progress.elapsed)
        timing = config.get_timing_cache()
        return engine, None if timing is None else bytes(timing.serialize())

    def _attach_timing_cache(self, config: Any, key: TimingCacheKey) -> None:
        """The stored timing cache for ``key``, or an empty one where there is none or TensorRT refuses it
        (``set_timing_cache`` is False for a cache of another TensorRT version or device)."""
        stored = self.cache.read(key) if self.cache is not None else None
        if stored:
            timing = config.create_timing_cache(stored)
            if timing is not None and config.set_timing_cache(timing, False):
                return
            log.warning("TensorRT refused the stored timing cache for %s %s (%s, sm %s); building with an "
                        "empty one", key.library, key.library_version, key.gpu_name, key.compute_capability)
        timing = config.create_timing_cache(b"")
        if timing is None or not config.set_timing_cache(timing, False):
            raise EngineError("TensorRT refused an empty timing cache (see TensorRT's messages above)")


# ---- runtime -------------------------------------------------------------------------------------
#: TensorRT DataType names -> torch dtypes.
_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
           "INT64": torch.int64, "INT8": torch.int8, "UINT8": torch.uint8, "BOOL": torch.bool}


def _torch_dtype(trt_dtype: Any) -> torch.dtype:
    name = getattr(trt_dtype, "name", str(trt_dtype)).rsplit(".", 1)[-1]
    if name not in _DTYPES:
        raise EngineError(f"engine tensor type {name} has no torch equivalent")
    return _DTYPES[name]


@dataclass(frozen=True)
class _Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype


class TensorRTExecution:
    """A deserialized engine and its execution context on one device: one input, one output, fixed shapes
    (see the module docstring for streams, addresses and release)."""

    def __init__(self, trt: ModuleType, runtime: Any, engine: Any, device: Device) -> None:
        self._context: Any = None  # set last: close() and __del__ look at it
        self._runtime, self._engine = runtime, engine  # the runtime must outlive the engine
        self.device = device
        self._lock = threading.Lock()
        tensors = [self._describe(engine, engine.get_tensor_name(i)) for i in range(engine.num_io_tensors)]
        inputs = [t for t, mode in tensors if mode == trt.TensorIOMode.INPUT]
        outputs = [t for t, mode in tensors if mode != trt.TensorIOMode.INPUT]
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME or len(outputs) != 1:
            raise EngineError(f"engine has inputs {[t.name for t in inputs]} and outputs {[t.name for t in outputs]}; "
                              f"expected one input {INPUT_NAME!r} and one output")
        (self.input,), (self.output,) = inputs, outputs
        with device.scope():
            self._stream = device.new_stream()
            context = engine.create_execution_context()
        if context is None:
            raise EngineError("TensorRT could not create an execution context (out of GPU memory?)")
        self._context = context

    @staticmethod
    def _describe(engine: Any, name: str) -> tuple[_Tensor, Any]:
        shape = tuple(int(d) for d in engine.get_tensor_shape(name))
        return _Tensor(name, shape, _torch_dtype(engine.get_tensor_dtype(name))), engine.get_tensor_mode(name)

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        """The output for ``batch``, ready when this returns (one stream synchronisation per frame)."""
        if tuple(batch.shape) != self.input.shape:
            raise EngineError(f"batch shape {list(batch.shape)} differs from the engine's fixed input shape "
                              f"{list(self.input.shape)}; build an engine for this size")
        with self._lock, self.device.scope():
            if self._context is None:
                raise EngineError("this TensorRT engine has been released")
            producer = self.device.current_stream()
            batch = batch.to(self.device.torch_device, self.input.dtype, non_blocking=True).contiguous()
            if batch.data_ptr() % TENSOR_ALIGNMENT:
                batch = batch.clone()  # a view into a larger tensor; fresh allocations are aligned
            out = torch.empty(self.output.shape, dtype=self.output.dtype, device=self.device.torch_device)
            self._bind(self.input.name, batch)
            self._bind(self.output.name, out)
            self._stream.wait_stream(producer)  # the input (and out's allocation) come from the caller's stream
            try:
                enqueued = self._context.execute_async_v3(self._stream.cuda_stream)
            finally:
                self._stream.synchronize()
            if not enqueued:
                raise EngineError("TensorRT execute_async_v3 failed (see TensorRT's messages above)")
        return out

    def _bind(self, name: str, tensor: torch.Tensor) -> None:
        address = tensor.data_ptr()
        if not self._context.set_tensor_address(name, address):
            raise EngineError(f"TensorRT refused address 0x{address:x} for tensor {name!r} (not an I/O tensor of "
                              f"the engine, or not {TENSOR_ALIGNMENT}-byte aligned)")

    def close(self) -> None:
        """Wait for this execution's stream, then release its context and engine (idempotent; a frame in
        progress finishes first). Garbage collection calls it too."""
        with self._lock:
            if self._context is None:
                return
            with self.device.scope():
                self._stream.synchronize()
                self._context = None  # the context before its engine
                self._engine = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: CUDA may already be gone
            pass


class TensorRTRuntime:
    """Serialized engines -> :class:`TensorRTExecution` on ``device`` (a CUDA device; EngineError otherwise)."""

    def __init__(self, device: str | int | torch.device | Device = "cuda", trt: ModuleType | None = None) -> None:
        self.trt = trt or import_tensorrt()
        self.device = as_device(device)
        self._runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING))

    def load(self, serialized: bytes) -> TensorRTExecution:
        """EngineError when TensorRT refuses the bytes (another version or GPU, corruption)."""
        with self.device.scope():
            engine = self._runtime.deserialize_cuda_engine(serialized)
        if engine is None:
            raise EngineError("TensorRT could not deserialize the engine (made by another TensorRT version or "
                              "for another GPU?)")
        return TensorRTExecution(self.trt, self._runtime, engine, self.device)


# ---- the Engine ----------------------------------------------------------------------------------
class TensorRTEngine:
    """One built engine behind the :class:`~.base.Engine` protocol; its ISR setting is baked in (switch
    settings with :class:`~.switching.SwitchingEngine`, which :class:`TensorRTFactory` feeds)."""

    backend = "tensorrt"

    def __init__(self, execution: Execution, key: CacheKey, device: torch.device, path: Path | None = None) -> None:
        self.execution, self.key, self.device, self.path = execution, key, torch.device(device), path
        self.network = key.network

    @property
    def isr(self) -> ISRSetting | None:
        return ISRSetting.read(self.key.isr) if self.key.isr else None

    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        return self.execution.run(batch)

    def close(self) -> None:
        """Release the engine's GPU memory now (after its stream is idle) instead of at garbage collection."""
        self.execution.close()

    def set_isr(self, setting: ISRSetting) -> None:
        if setting != self.isr:
            raise ValueError(f"this TensorRT engine has ISR {self.isr} baked in, not {setting}; to switch, "
                             f"use a SwitchingEngine (switching_engine_for_network('tensorrt', ...))")

    def describe(self) -> dict[str, Any]:
        key = self.key
        described: dict[str, Any] = {
            "backend": self.backend, "network": key.network, "device": str(self.device),
            "precision": key.precision, "input_size": (key.height, key.width), "batch": key.batch,
            "tensorrt": key.library_version, "gpu": f"{key.gpu_name} (sm {key.compute_capability})",
            "file": str(self.path) if self.path else None,
        }
        if key.isr:
            described["isr"] = key.isr
        return described


class TensorRTFactory:
    """``make(setting) -> TensorRTEngine`` for one network, input size and precision (see the module docstring).

    Args:
        folder: engine cache folder (also holds the timing cache).
        device: the CUDA device engines are built for and run on (``cuda`` = the current one); the tests
            pass a stand-in :class:`~.cuda_device.Device`.
        graphs_folder: where the exported ONNX graphs go (None = ``folder``; shared with ONNX Runtime).
        builder, runtime: injected for tests; None = TensorRT's.
        workspace_bytes, tick_seconds: passed to the default builder.
    """

    def __init__(self, net: nn.Module, height: int, width: int, folder: str | os.PathLike,
                 precision: str = "fp32", device: str | int | torch.device | Device = "cuda",
                 builder: Builder | None = None, runtime: Runtime | None = None,
                 workspace_bytes: int = DEFAULT_WORKSPACE, tick_seconds: float = DEFAULT_TICK,
                 graphs_folder: str | os.PathLike | None = None) -> None:
        check_precision("tensorrt", precision)
        self.device = as_device(device)
        self.gpu = self.device.gpu()
        self.cache = EngineCache(folder)
        self.builder = builder or TensorRTBuilder(workspace_bytes, self.cache, tick_seconds)
        self.runtime = runtime or TensorRTRuntime(self.device)
        self.graphs = GraphCache(private_export_copy(net), int(height), int(width),
                                 Path(graphs_folder or self.cache.directory), precision, MIN_OPSET)

    def key(self, setting: ISRSetting | None) -> CacheKey:
        g = self.graphs
        info = graph_info(g.net, g.height, g.width, g.precision, g.opset, 1, setting)
        return CacheKey(network=info.network, weights_digest=info.weights_digest, height=info.height,
                        width=info.width, isr=info.isr, precision=info.precision, library=LIBRARY,
                        library_version=self.builder.version, gpu_name=self.gpu.name,
                        compute_capability=self.gpu.compute_capability, batch=info.batch)

    def __call__(self, setting: ISRSetting | None) -> TensorRTEngine:
        key = self.key(setting)
        payload = self.cache.read(key)
        if payload is not None:
            try:
                return self._engine(self.runtime.load(payload), key)
            except EngineError as error:
                log.warning("%s: %s; rebuilding", self.cache.path_for(key), error)
                self.cache.remove(key)
        payload = self.build(key, setting)
        return self._engine(self.runtime.load(payload), key)

    def _engine(self, execution: Execution, key: CacheKey) -> TensorRTEngine:
        return TensorRTEngine(execution, key, self.device.torch_device, self.cache.path_for(key))

    def build(self, key: CacheKey, setting: ISRSetting | None) -> bytes:
        """Export (or reuse) the ONNX graph, build, store in the cache; the serialized engine."""
        with EXPORT_LOCK:
            onnx_path = self.graphs(setting)
        payload = self.builder.build(onnx_path.read_bytes(), key.precision, key.label, self.device)
        self.cache.write(key, payload)
        return payload
