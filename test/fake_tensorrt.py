"""A fake ``tensorrt`` module and a stand-in CUDA device, to test the TensorRT backend without TensorRT or a GPU.

:class:`FakeCuda` has the attributes of :class:`dense_perception.engines.cuda_device.Device` and keeps the
state TensorRT depends on: the calling thread's *current device* (``scope()`` sets it, like
``torch.cuda.device``; 0 otherwise, as in CUDA), and streams whose work runs only when they are
synchronised, so a result read without synchronising is stale, as on a GPU. Its memory is the CPU's
(tensors live on ``torch.device("cpu")``, 64-byte aligned by torch's allocator).

:class:`FakeTensorRT` obeys the TensorRT 10 Python API the backend uses and refuses what TensorRT refuses
(or what this package must never do with it):

* a build of a network created without ``STRONGLY_TYPED`` (precision must come from the graph, and
  TensorRT 11 has no other mode), or with precision builder flags (``FP16``) on a strongly typed one;
* a graph with an operator TensorRT's ONNX parser has no importer for (the onnx-tensorrt support matrix
  of :mod:`dense_perception.engines.tensorrt_ops`) or outside the default ONNX domain;
* ``set_timing_cache`` with a cache of another TensorRT version or GPU (returns False);
* ``set_tensor_address`` for a name that is not an I/O tensor, a null or misaligned address (False);
* ``execute_async_v3`` with an I/O tensor whose address is not set (False); on the legacy default stream
  (handle 0, where real TensorRT adds synchronisations), with another device current than the context's,
  or on a stream that did not wait for the caller's stream since its last enqueue (these raise
  :class:`FakeTensorRTMisuse`);
* an execution context destroyed while an enqueue on it is pending (recorded in ``violations``: a
  destructor cannot raise).

Every call that TensorRT makes on the current device is recorded in ``events`` as ``(what, device)``.
Its "engine" reads the input through the address given to ``set_tensor_address`` and writes the input's
mean into every element of the output through the output's address -- when its stream is synchronised --
so a run proves the buffers are the torch tensors themselves.
"""
from __future__ import annotations

import contextlib
import ctypes
import enum
import itertools
import json
import time
from typing import Any, Callable, Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper

import torch

from dense_perception.engines.cuda_device import GpuInfo
from dense_perception.engines.tensorrt_ops import TENSORRT_ONNX_OPS


class FakeTensorRTMisuse(AssertionError):
    """A call real TensorRT would refuse, or that this package must never make."""


# ---- the device -----------------------------------------------------------------------------------
class FakeStream:
    """A stream whose enqueued work runs, in order, when it is synchronised."""

    def __init__(self, handle: int) -> None:
        self.cuda_stream = handle
        self.pending: list[Callable[[], None]] = []
        self.waited_for: list[FakeStream] = []  # streams waited for since the last enqueue
        self.synchronizations = 0

    def wait_stream(self, stream: "FakeStream") -> None:
        self.waited_for.append(stream)

    def enqueue(self, work: Callable[[], None]) -> None:
        self.pending.append(work)
        self.waited_for = []

    def synchronize(self) -> None:
        self.synchronizations += 1
        while self.pending:
            self.pending.pop(0)()


class FakeCuda:
    """A stand-in :class:`~dense_perception.engines.cuda_device.Device` for CUDA ordinal ``index``."""

    #: torch's CPU allocator aligns to 64 bytes (real TensorRT wants 256 on the GPU)
    alignment = 64

    def __init__(self, index: int = 0, name: str = "Fake GPU", compute_capability: str = "8.7") -> None:
        self.index = index
        self.torch_device = torch.device("cpu")
        self.info = GpuInfo(name, compute_capability)
        self.current = 0  # the calling thread's current device, as CUDA has it
        self.default_stream = FakeStream(0)  # the legacy default stream: torch's current one unless set
        self.streams: dict[int, FakeStream] = {}  # by handle, every stream made
        self._handles = itertools.count(1)

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        previous, self.current = self.current, self.index
        try:
            yield
        finally:
            self.current = previous

    def new_stream(self) -> FakeStream:
        stream = FakeStream(next(self._handles))
        self.streams[stream.cuda_stream] = stream
        return stream

    def current_stream(self) -> FakeStream:
        return self.default_stream

    def gpu(self) -> GpuInfo:
        return self.info


# ---- the tensorrt module --------------------------------------------------------------------------
class FakeTensorRT:
    """The ``tensorrt`` module (see the module docstring); ``cuda`` is the device its calls run on."""

    MAGIC = b"FAKETRT1"
    NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", [("STRONGLY_TYPED", 0)])
    MemoryPoolType = enum.Enum("MemoryPoolType", ["WORKSPACE"])
    BuilderFlag = enum.Enum("BuilderFlag", ["FP16", "TF32"])
    TensorIOMode = enum.Enum("TensorIOMode", ["INPUT", "OUTPUT"])
    DataType = enum.Enum("DataType", ["FLOAT", "HALF"])

    class Logger:
        WARNING = 2

        def __init__(self, severity: int = 2) -> None:
            self.severity = severity

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    def __init__(self, cuda: FakeCuda | None = None, version: str = "10.3.0", build_seconds: float = 0.0) -> None:
        self.cuda = cuda or FakeCuda()
        self.__version__ = version
        self.build_seconds = build_seconds
        self.kernel_seconds = 0.0  # how long the fake engine's work takes when its stream runs it
        self.builds: list[dict[str, Any]] = []  # one record per build_serialized_network call
        self.events: list[tuple[str, int]] = []  # (what, current device) for every call on the device
        self.violations: list[str] = []  # misuse seen where raising is impossible
        self.refuse_addresses = False  # make set_tensor_address refuse everything
        fake = self
        self.Builder = lambda logger: _FakeBuilder(fake)
        self.OnnxParser = lambda network, logger: _FakeParser(network)
        self.Runtime = lambda logger: _FakeRuntime(fake)

    def timing_header(self) -> bytes:
        """What a timing cache made by this TensorRT on this GPU starts with."""
        return f"TC {self.__version__} {self.cuda.info.name}|".encode()

    def event(self, what: str) -> None:
        self.events.append((what, self.cuda.current))

    def devices(self, what: str) -> set[int]:
        """The devices that were current for every ``what`` event."""
        return {device for name, device in self.events if name == what}


def _graph_type(value: onnx.ValueInfoProto) -> str:
    return "FLOAT" if value.type.tensor_type.elem_type == TensorProto.FLOAT else "HALF"


class _FakeNetwork:
    def __init__(self, flags: int) -> None:
        self.strongly_typed = bool(flags & (1 << int(FakeTensorRT.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
        self.io: dict[str, list] | None = None
        self.fp16_tensors = False


class _FakeParser:
    def __init__(self, network: _FakeNetwork) -> None:
        self.network, self.errors = network, []

    def parse(self, model: bytes) -> bool:
        try:
            proto = onnx.load_from_string(model)
        except Exception as exc:  # noqa: BLE001 - the real parser reports anything as an error
            self.errors.append(f"ModelImporter: cannot parse ({type(exc).__name__})")
            return False
        for node in proto.graph.node:
            if node.domain not in ("", "ai.onnx") or node.op_type not in TENSORRT_ONNX_OPS:
                self.errors.append(f"No importer registered for op: {node.op_type} (domain {node.domain or 'ai.onnx'})")
        if self.errors:
            return False

        def describe(value: onnx.ValueInfoProto) -> list:
            return [value.name, [d.dim_value for d in value.type.tensor_type.shape.dim], _graph_type(value)]

        self.network.io = {"input": describe(proto.graph.input[0]), "output": describe(proto.graph.output[0])}
        self.network.fp16_tensors = any(t.data_type == TensorProto.FLOAT16 for t in proto.graph.initializer)
        return True

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> str:
        return self.errors[index]


class _FakeTimingCache:
    def __init__(self, blob: bytes) -> None:
        self.blob = bytes(blob)

    def serialize(self) -> bytes:
        return self.blob + b"+"  # grows with every build that used it


class _FakeConfig:
    def __init__(self, fake: FakeTensorRT) -> None:
        self.fake = fake
        self.pools: dict[str, int] = {}
        self.flags: set[str] = {"TF32"}  # TensorRT's default
        self.timing: _FakeTimingCache | None = None
        self.progress_monitor: Any = None

    def set_memory_pool_limit(self, pool: Any, size: int) -> None:
        self.pools[pool.name] = size

    def set_flag(self, flag: Any) -> None:
        self.flags.add(flag.name)

    def clear_flag(self, flag: Any) -> None:
        self.flags.discard(flag.name)

    def create_timing_cache(self, blob: bytes) -> _FakeTimingCache:
        return _FakeTimingCache(blob if blob else self.fake.timing_header())

    def set_timing_cache(self, cache: _FakeTimingCache, ignore_mismatch: bool) -> bool:
        if not (ignore_mismatch or cache.blob.startswith(self.fake.timing_header())):
            return False  # another TensorRT version or GPU
        self.timing = cache
        return True

    def get_timing_cache(self) -> _FakeTimingCache | None:
        return self.timing


class _FakeBuilder:
    def __init__(self, fake: FakeTensorRT) -> None:
        self.fake = fake

    def create_network(self, flags: int) -> _FakeNetwork:
        return _FakeNetwork(flags)

    def create_builder_config(self) -> _FakeConfig:
        return _FakeConfig(self.fake)

    def build_serialized_network(self, network: _FakeNetwork, config: _FakeConfig) -> bytes | None:
        fake = self.fake
        fake.event("build")
        if not network.strongly_typed or "FP16" in config.flags:
            return None  # weakly typed, or a precision flag on a strongly typed network
        monitor = config.progress_monitor
        if monitor is not None:
            monitor.phase_start("Building engine", None, 2)
        time.sleep(fake.build_seconds)
        if monitor is not None:
            monitor.step_complete("Building engine", 0)
            monitor.phase_finish("Building engine")
        timing = config.timing.blob[len(fake.timing_header()):].decode() if config.timing else None
        record = {"strongly_typed": network.strongly_typed, "flags": sorted(config.flags),
                  "workspace": config.pools.get("WORKSPACE"), "timing_in": timing,
                  "fp16_tensors": network.fp16_tensors, "io": network.io, "device": fake.cuda.current}
        fake.builds.append(record)
        return FakeTensorRT.MAGIC + json.dumps(record).encode()


class _FakeRuntime:
    def __init__(self, fake: FakeTensorRT) -> None:
        self.fake = fake

    def deserialize_cuda_engine(self, data: bytes) -> "_FakeCudaEngine | None":
        self.fake.event("deserialize")
        if not data.startswith(FakeTensorRT.MAGIC):
            return None
        return _FakeCudaEngine(self.fake, json.loads(data[len(FakeTensorRT.MAGIC):])["io"])


class _FakeCudaEngine:
    def __init__(self, fake: FakeTensorRT, io: dict[str, list]) -> None:
        self.fake = fake
        self.tensors = [io["input"], io["output"]]
        self.num_io_tensors = 2

    def get_tensor_name(self, index: int) -> str:
        return self.tensors[index][0]

    def _find(self, name: str) -> list:
        return next(t for t in self.tensors if t[0] == name)

    def get_tensor_shape(self, name: str) -> list[int]:
        return self._find(name)[1]

    def get_tensor_dtype(self, name: str) -> Any:
        return FakeTensorRT.DataType[self._find(name)[2]]

    def get_tensor_mode(self, name: str) -> Any:
        return FakeTensorRT.TensorIOMode.INPUT if name == self.tensors[0][0] else FakeTensorRT.TensorIOMode.OUTPUT

    def create_execution_context(self) -> "_FakeContext":
        self.fake.event("context")
        return _FakeContext(self)


class _FakeContext:
    def __init__(self, engine: _FakeCudaEngine) -> None:
        self.engine, self.fake = engine, engine.fake
        self.device = self.fake.cuda.current
        self.addresses: dict[str, int] = {}
        # enqueues not run yet; a list the enqueued work shares, so that the work does not keep the
        # context alive (TensorRT's context goes when its Python object does, pending work or not)
        self.pending: list[int] = [0]

    def set_tensor_address(self, name: str, address: int) -> bool:
        names = [t[0] for t in self.engine.tensors]
        if self.fake.refuse_addresses or name not in names or not address or address % self.fake.cuda.alignment:
            return False
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        fake, cuda = self.fake, self.fake.cuda
        fake.event("execute")
        if any(t[0] not in self.addresses for t in self.engine.tensors):
            return False  # "Neither address or allocator is set for ..." in TensorRT
        if stream_handle == 0:
            raise FakeTensorRTMisuse("enqueue on the legacy default stream")
        if cuda.current != self.device:
            raise FakeTensorRTMisuse(f"enqueue with device {cuda.current} current; the context is on {self.device}")
        stream = cuda.streams.get(stream_handle)
        if stream is None:
            raise FakeTensorRTMisuse(f"enqueue on stream {stream_handle}, which this device did not make")
        if cuda.default_stream not in stream.waited_for:
            raise FakeTensorRTMisuse("enqueue on a stream that did not wait for the stream producing the input")
        (inp, in_shape, _), (out, out_shape, _) = self.engine.tensors
        source_address, target_address = self.addresses[inp], self.addresses[out]
        pending, seconds = self.pending, fake.kernel_seconds

        def kernel() -> None:
            pending[0] -= 1
            if pending[0] < 0:  # the context is gone: its buffers may be too
                return
            time.sleep(seconds)
            source = np.ctypeslib.as_array((ctypes.c_float * int(np.prod(in_shape))).from_address(source_address))
            target = np.ctypeslib.as_array((ctypes.c_float * int(np.prod(out_shape))).from_address(target_address))
            target[:] = source.mean()

        pending[0] += 1
        stream.enqueue(kernel)
        return True

    def __del__(self) -> None:
        self.fake.event("release")
        if self.pending[0]:
            self.fake.violations.append(f"execution context destroyed with {self.pending[0]} enqueue(s) pending")
            self.pending[0] = -(1 << 30)  # the pending work must not touch the buffers any more


def tiny_onnx(elem_type: int = TensorProto.FLOAT, op: str = "Mul", domain: str = "") -> bytes:
    """``image [1,3,4,4] -> logits [1,3,4,4]`` through ``op`` (Mul by a scale); an fp16 initializer when
    ``elem_type`` is FLOAT16."""
    scale = helper.make_tensor("scale", elem_type, [1], [1.0])
    nodes = [helper.make_node("Cast", ["image"], ["x"], to=elem_type),
             helper.make_node(op, ["x", "scale"], ["y"], domain=domain),
             helper.make_node("Cast", ["y"], ["logits"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 4, 4])], [scale])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()
