"""The TensorRT backend against a fake ``tensorrt`` module with the same interface, the background ISR
switch (fake engines, then real ONNX Runtime sessions), and -- where TensorRT exists -- the real thing."""
from __future__ import annotations

import ctypes
import enum
import gc
import json
import logging
import threading
import time
import tracemalloc
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from dense_perception.api import Segmenter
from dense_perception.cli import main as cli_main
from dense_perception.engines import tensorrt_engine as trt_module
from dense_perception.engines.base import Engine, EngineError
from dense_perception.engines.cache import EngineCache, TimingCacheKey
from dense_perception.engines.switching import SwitchingEngine, switching_engine_for_network
from dense_perception.engines.tensorrt_engine import (
    GpuInfo, TensorRTBuilder, TensorRTEngine, TensorRTFactory, TensorRTRuntime, tensorrt_available,
)
from dense_perception.networks import ISRSetting, build_network
from dense_perception.networks.common import fill_reference_weights

EDA = "edaformer_t_ade20k"
H = W = 64
TRAINING = ISRSetting()
RATIO2 = ISRSetting.from_ratio(2)
GPU = GpuInfo("Fake GPU", "8.7")
NO_TENSORRT = "TensorRT is not installed (NVIDIA's index only)"


# ---- a fake `tensorrt` module ------------------------------------------------------------------
class FakeTensorRT:
    """Obeys the TensorRT 10 Python API the backend uses and records what it was asked.

    Its "engine" reads the input through the address given to ``set_tensor_address`` and writes the input's
    mean into every element of the output through the output's address, so a run proves the buffers are
    the torch tensors themselves.
    """

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

    def __init__(self, version: str = "10.3.0", build_seconds: float = 0.0) -> None:
        self.__version__ = version
        self.build_seconds = build_seconds
        self.builds: list[dict[str, Any]] = []  # one record per build_serialized_network call
        fake = self
        self.Builder = lambda logger: _FakeBuilder(fake)
        self.OnnxParser = lambda network, logger: _FakeParser(network)
        self.Runtime = lambda logger: _FakeRuntime(fake)


class _FakeNetwork:
    def __init__(self, flags: int) -> None:
        self.flags, self.io, self.fp16_tensors = flags, None, False


class _FakeParser:
    def __init__(self, network: _FakeNetwork) -> None:
        self.network, self.errors = network, []

    def parse(self, model: bytes) -> bool:
        try:
            proto = onnx.load_from_string(model)
        except Exception as exc:  # noqa: BLE001 - the real parser reports anything as an error
            self.errors.append(f"ModelImporter: cannot parse ({type(exc).__name__})")
            return False

        def describe(value: Any) -> list:
            dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
            return [value.name, dims, "FLOAT" if value.type.tensor_type.elem_type == TensorProto.FLOAT else "HALF"]

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
    def __init__(self) -> None:
        self.pools: dict[Any, int] = {}
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
        return _FakeTimingCache(blob)

    def set_timing_cache(self, cache: _FakeTimingCache, ignore_mismatch: bool) -> bool:
        self.timing = cache
        return True

    def get_timing_cache(self) -> _FakeTimingCache:
        return self.timing


class _FakeBuilder:
    def __init__(self, fake: FakeTensorRT) -> None:
        self.fake = fake

    def create_network(self, flags: int) -> _FakeNetwork:
        return _FakeNetwork(flags)

    def create_builder_config(self) -> _FakeConfig:
        return _FakeConfig()

    def build_serialized_network(self, network: _FakeNetwork, config: _FakeConfig) -> bytes | None:
        monitor = config.progress_monitor
        if monitor is not None:
            monitor.phase_start("Building engine", None, 2)
        time.sleep(self.fake.build_seconds)
        if monitor is not None:
            monitor.step_complete("Building engine", 0)
            monitor.phase_finish("Building engine")
        record = {"strongly_typed": bool(network.flags & (1 << 0)), "flags": sorted(config.flags),
                  "workspace": config.pools.get("WORKSPACE"), "timing_in": config.timing.blob.decode(),
                  "fp16_tensors": network.fp16_tensors, "io": network.io}
        self.fake.builds.append(record)
        return FakeTensorRT.MAGIC + json.dumps(record).encode()


class _FakeRuntime:
    def __init__(self, fake: FakeTensorRT) -> None:
        self.fake = fake

    def deserialize_cuda_engine(self, data: bytes) -> "_FakeCudaEngine | None":
        if not data.startswith(FakeTensorRT.MAGIC):
            return None
        return _FakeCudaEngine(json.loads(data[len(FakeTensorRT.MAGIC):])["io"])


class _FakeCudaEngine:
    def __init__(self, io: dict[str, list]) -> None:
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
        return _FakeContext(self)


class _FakeContext:
    def __init__(self, engine: _FakeCudaEngine) -> None:
        self.engine, self.addresses = engine, {}

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream: int) -> bool:
        (inp, in_shape, _), (out, out_shape, _) = self.engine.tensors
        source = np.ctypeslib.as_array((ctypes.c_float * int(np.prod(in_shape))).from_address(self.addresses[inp]))
        target = np.ctypeslib.as_array((ctypes.c_float * int(np.prod(out_shape))).from_address(self.addresses[out]))
        target[:] = source.mean()
        return True


def tiny_onnx(elem_type: int = TensorProto.FLOAT) -> bytes:
    """``image [1,3,4,4] -> logits [1,3,4,4]``; an fp16 initializer when ``elem_type`` is FLOAT16."""
    scale = helper.make_tensor("scale", elem_type, [1], [1.0])
    nodes = [helper.make_node("Cast", ["image"], ["x"], to=elem_type),
             helper.make_node("Mul", ["x", "scale"], ["y"]),
             helper.make_node("Cast", ["y"], ["logits"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 4, 4])], [scale])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


# ---- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def eda() -> torch.nn.Module:
    net = build_network(EDA)
    net.load_state_dict(fill_reference_weights(net))
    return net.eval()


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> Path:
    """ONNX graphs shared by the tests of this module (exports are the slow part)."""
    return tmp_path_factory.mktemp("graphs")


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(0))


def torch_output(net: torch.nn.Module, x: torch.Tensor, setting: ISRSetting) -> torch.Tensor:
    previous = net.isr
    try:
        net.set_isr(setting)
        with torch.no_grad():
            return net(x)
    finally:
        net.set_isr(previous)


def fake_factory(net: torch.nn.Module, folder: Path, graphs: Path, fake: FakeTensorRT, precision: str = "fp32",
                 tick: float = 30.0) -> TensorRTFactory:
    cache = EngineCache(folder)
    return TensorRTFactory(net, H, W, folder, precision, "cpu", builder=TensorRTBuilder(cache=cache, trt=fake,
                           tick_seconds=tick), runtime=TensorRTRuntime("cpu", trt=fake), gpu=GPU,
                           graphs_folder=graphs)


# ---- TensorRT pieces with the fake -------------------------------------------------------------
def test_builds_once_then_reads_the_cache_and_runs_on_the_tensors(eda, graphs, image, tmp_path) -> None:
    fake = FakeTensorRT()
    engine = fake_factory(eda, tmp_path, graphs, fake)(TRAINING)
    assert isinstance(engine, TensorRTEngine) and isinstance(engine, Engine)
    assert engine.isr == TRAINING and engine.backend == "tensorrt" and len(fake.builds) == 1
    build = fake.builds[0]
    assert build["strongly_typed"] and "FP16" not in build["flags"] and "TF32" not in build["flags"]
    assert build["workspace"] == trt_module.DEFAULT_WORKSPACE and build["io"]["input"][1] == [1, 3, H, W]
    out = engine.infer(image)
    assert out.shape == (1, 150, H // 8, W // 8) and torch.allclose(out, image.mean().expand_as(out))
    # a new process: same key -> the engine comes from disk
    again = fake_factory(eda, tmp_path, graphs, fake)(TRAINING)
    assert len(fake.builds) == 1 and again.path == engine.path and again.path.exists()
    # the timing cache was saved and is handed to the next build
    key = TimingCacheKey("tensorrt", "10.3.0", GPU.name, GPU.compute_capability)
    assert EngineCache(tmp_path).read(key) == b"+"
    assert EngineCache(tmp_path).remove(again.key)
    fake_factory(eda, tmp_path, graphs, fake)(TRAINING)
    assert len(fake.builds) == 2 and fake.builds[1]["timing_in"] == "+"
    # another TensorRT version or GPU is another key
    newer = FakeTensorRT(version="10.4.0")
    assert fake_factory(eda, tmp_path, graphs, newer).key(TRAINING) != again.key
    fake_factory(eda, tmp_path, graphs, newer)(TRAINING)
    assert len(newer.builds) == 1
    with pytest.raises(ValueError, match="baked in"):
        engine.set_isr(RATIO2)
    assert engine.describe()["gpu"] == "Fake GPU (sm 8.7)"


def test_engine_tensorrt_refuses_is_rebuilt(eda, graphs, tmp_path, caplog) -> None:
    fake = FakeTensorRT()
    factory = fake_factory(eda, tmp_path, graphs, fake)
    factory.cache.write(factory.key(TRAINING), b"a well-formed entry TensorRT cannot deserialize")
    with caplog.at_level(logging.WARNING):
        engine = factory(TRAINING)
    assert "could not deserialize" in caplog.text and len(fake.builds) == 1
    assert factory.cache.read(engine.key).startswith(FakeTensorRT.MAGIC)


def test_fp16_is_a_strongly_typed_build_of_the_fp16_graph(eda, graphs, tmp_path) -> None:
    fake = FakeTensorRT()
    builder = TensorRTBuilder(trt=fake)
    builder.build(tiny_onnx(TensorProto.FLOAT16), "fp16", "tiny fp16", GPU)
    record = fake.builds[-1]
    assert record["strongly_typed"] and record["fp16_tensors"] and "FP16" not in record["flags"]
    assert record["io"]["input"][2] == "FLOAT"  # float32 input and output around the fp16 graph
    factory = fake_factory(eda, tmp_path, graphs, fake, precision="fp16")
    assert factory.graphs.precision == "fp16" and factory.key(TRAINING).precision == "fp16"
    assert factory.key(TRAINING) != fake_factory(eda, tmp_path, graphs, fake).key(TRAINING)


def test_build_progress_lines(caplog) -> None:
    fake = FakeTensorRT(build_seconds=0.35)
    with caplog.at_level(logging.INFO, logger=trt_module.__name__):
        TensorRTBuilder(trt=fake, tick_seconds=0.1).build(tiny_onnx(), "fp32", "tiny 4x4", GPU)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("building TensorRT engine tiny 4x4; this can take several minutes")
    assert any("Building engine (2 steps)" in line for line in lines)
    assert sum("still building TensorRT engine tiny 4x4" in line for line in lines) >= 2
    assert lines[-1].startswith("built TensorRT engine tiny 4x4:") and " MB in " in lines[-1]


def test_parser_and_missing_library_errors(monkeypatch) -> None:
    with pytest.raises(EngineError, match="ONNX parser refused.*cannot parse"):
        TensorRTBuilder(trt=FakeTensorRT()).build(b"not onnx", "fp32", "junk", GPU)
    with pytest.raises(EngineError, match="could not deserialize"):
        TensorRTRuntime("cpu", trt=FakeTensorRT()).load(b"junk")
    if not tensorrt_available():
        with pytest.raises(EngineError, match="TensorRT is not installed"):
            TensorRTBuilder()
        with pytest.raises(EngineError, match="TensorRT is not installed"):
            Segmenter(EDA, backend="tensorrt")


@pytest.mark.skipif(tensorrt_available(), reason="checks the message shown where TensorRT is missing")
def test_cli_engines(tmp_path, capsys) -> None:
    folder = tmp_path / "engines"
    assert cli_main(["engines", "--dir", str(folder), "build", EDA, "--size", "64", "64"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "TensorRT is not installed" in err
    cache = EngineCache(folder)
    cache.write(TimingCacheKey("tensorrt", "10.3.0", "Fake GPU", "8.7"), b"t")
    (folder / "junk-0.engine").write_bytes(b"junk")
    assert cli_main(["engines", "--dir", str(folder), "list"]) == 0
    out = capsys.readouterr().out
    assert "timing cache  tensorrt 10.3.0  Fake GPU" in out and "junk-0.engine  UNUSABLE" in out
    assert cli_main(["engines", "--dir", str(folder), "clear"]) == 0
    assert "removed 1 file(s)" in capsys.readouterr().out  # the cache's own entry only
    assert [p.name for p in folder.iterdir()] == ["junk-0.engine"]  # not the cache's: left alone


# ---- the background switch with fake engines ---------------------------------------------------
A, B, C = ISRSetting.from_ratio(1), ISRSetting.from_ratio(2), ISRSetting.from_ratio(3)


class FakeEngine:
    """Answers ``(its setting, the frame)``; holds some memory so that leaks would show."""

    backend, network, device = "fake", "fake_net", torch.device("cpu")

    def __init__(self, setting: ISRSetting | None) -> None:
        self.setting = setting
        self.ballast = bytearray(256 * 1024)

    def infer(self, frame: Any) -> tuple[ISRSetting | None, Any]:
        return self.setting, frame

    @property
    def isr(self) -> ISRSetting | None:
        return self.setting

    def set_isr(self, setting: ISRSetting) -> None:
        raise ValueError("baked in")

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "isr": str(self.setting)}


class FakeFactory:
    """``make(setting)``: slow for every build after the first, failing for ``fail``; counts builds."""

    def __init__(self, delay: float = 0.0, fail: ISRSetting | None = None) -> None:
        self.delay, self.fail = delay, fail
        self.built: list[ISRSetting | None] = []
        self.live: weakref.WeakSet = weakref.WeakSet()

    def __call__(self, setting: ISRSetting | None) -> FakeEngine:
        if self.built:
            time.sleep(self.delay)
        self.built.append(setting)
        if setting == self.fail:
            raise EngineError(f"simulated build failure for {setting}")
        engine = FakeEngine(setting)
        self.live.add(engine)
        return engine


def test_stream_of_frames_through_a_switch() -> None:
    factory = FakeFactory(delay=0.3)
    switching = SwitchingEngine(factory, A)
    results: list[tuple[ISRSetting, int]] = []
    latencies: list[float] = []
    futures = []

    def feed() -> None:
        for index in range(200):
            if index == 20:
                futures.append(switching.request_isr(B))
            start = time.perf_counter()
            results.append(switching.infer(index))
            latencies.append(time.perf_counter() - start)
            time.sleep(0.004)

    feeder = threading.Thread(target=feed)
    feeder.start()
    feeder.join(timeout=30)
    assert futures[0].result(timeout=5) == B and switching.isr == B and switching.pending is None
    assert [frame for _, frame in results] == list(range(200))  # every frame, in order
    settings = [setting for setting, _ in results]
    first_new = settings.index(B)
    assert set(settings) == {A, B} and settings == [A] * first_new + [B] * (200 - first_new)  # one swap
    assert first_new >= 25  # frames kept flowing on the old engine during the 0.3 s build
    assert max(latencies) < 0.15  # no frame waited for the 0.3 s build
    assert factory.built == [A, B]


def test_failed_build_keeps_the_old_engine() -> None:
    factory = FakeFactory(fail=B)
    switching = SwitchingEngine(factory, A)
    future = switching.request_isr(B)
    with pytest.raises(EngineError, match="simulated build failure"):
        future.result(timeout=5)
    assert switching.isr == A and switching.infer(1) == (A, 1) and switching.pending is None
    status = switching.status()
    assert status.serving == A and "simulated build failure" in status.error
    assert switching.request_isr(B).exception(timeout=1) is not None and factory.built == [A, B]  # no loop
    switching.request_isr(B, retry=True).exception(timeout=5)
    assert factory.built == [A, B, B]
    assert switching.request_isr(C).result(timeout=5) == C and switching.status().error is None


def test_newest_request_wins_and_stale_ones_are_not_built() -> None:
    factory = FakeFactory(delay=0.2)
    switching = SwitchingEngine(factory, A)
    first = switching.request_isr(B)
    time.sleep(0.05)  # B is building now
    stale = switching.request_isr(A)  # back to the serving setting: nothing to do
    queued = switching.request_isr(C)
    newest = switching.request_isr(B)  # B is still building: shares it, and C is dropped
    assert stale.result() == A and first.cancelled() and queued.cancelled()
    assert newest.result(timeout=5) == B and switching.wait_idle(5)
    assert factory.built == [A, B] and switching.isr == B
    assert switching.request_isr(A).done() and switching.isr == A  # kept in memory: immediate swap


def test_prebuild_then_switch_at_once() -> None:
    factory = FakeFactory(delay=0.05)
    switching = SwitchingEngine(factory, A, keep=3, prebuild=[B, C])
    assert switching.wait_idle(5) and factory.built == [A, B, C] and switching.isr == A
    for setting in (B, C, A):
        assert switching.request_isr(setting).done() and switching.isr == setting
    assert factory.built == [A, B, C] and switching.engines_held == 3


def test_memory_stays_bounded_over_100_switches() -> None:
    factory = FakeFactory()
    switching = SwitchingEngine(factory, A, keep=1)  # every switch rebuilds: the worst case
    tracemalloc.start()
    try:
        for index in range(100):
            switching.request_isr(B if index % 2 == 0 else A).result(timeout=5)
            assert switching.wait_idle(5)
            if index == 9:
                gc.collect()
                baseline = tracemalloc.get_traced_memory()[0]
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    assert len(factory.built) == 101 and len(factory.live) <= 2 and switching.engines_held == 1
    assert grown < 512 * 1024, f"memory grew by {grown} bytes over 90 switches"
    cached = FakeFactory()
    two = SwitchingEngine(cached, A, keep=2)
    for index in range(100):
        two.request_isr(B if index % 2 == 0 else A).result(timeout=5)
    assert cached.built == [A, B] and len(cached.live) == 2


# ---- ONNX Runtime through the same switch ------------------------------------------------------
def test_onnxruntime_switches_isr_in_the_background(eda, graphs, image) -> None:
    switching = switching_engine_for_network("onnxruntime", eda, H, W, graphs, initial=TRAINING)
    assert switching.backend == "onnxruntime" and switching.isr == TRAINING
    torch.testing.assert_close(switching.infer(image), torch_output(eda, image, TRAINING), rtol=1e-4, atol=1e-4)
    future = switching.request_isr(RATIO2)
    assert switching.isr == TRAINING  # still serving while the graph is exported
    assert future.result(timeout=120) == RATIO2 and switching.isr == RATIO2
    torch.testing.assert_close(switching.infer(image), torch_output(eda, image, RATIO2), rtol=1e-4, atol=1e-4)
    assert eda.isr == TRAINING  # the caller's network is never touched by the background export


def test_segmenter_on_onnxruntime_switches_without_blocking(eda, graphs, tmp_path, monkeypatch) -> None:
    checkpoint = tmp_path / "eda.pth"
    torch.save({"state_dict": eda.state_dict(), "meta": {}}, checkpoint)
    seg = Segmenter(EDA, checkpoint=checkpoint, backend="onnxruntime", input_size=(H, W), engine_dir=graphs,
                    isr_prebuild=[RATIO2])
    rgb = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    assert seg.predict(rgb).isr == TRAINING  # first frame: engine for the training setting (+ prebuild)
    with pytest.raises(ValueError, match="does not fit"):
        seg.set_isr(8)  # checked at once against the 64x64 input
    start = time.perf_counter()
    assert seg.set_isr(2) == RATIO2
    assert time.perf_counter() - start < 1.0
    deadline = time.monotonic() + 120
    while seg.isr != RATIO2 and time.monotonic() < deadline:
        seg.predict(rgb)  # keeps serving meanwhile
        time.sleep(0.05)
    state = seg.isr_control.state
    assert state.served == state.requested == RATIO2 and state.pending is None and state.error is None
    logits, prepared = seg.logits(rgb)
    torch.testing.assert_close(logits, torch_output(eda, prepared.tensor, RATIO2), rtol=1e-4, atol=1e-4)
    # a failing background build: reported by isr_status, the old engine keeps serving
    from dense_perception.engines import export

    def broken(*args: Any) -> None:
        raise EngineError("simulated export failure")

    monkeypatch.setattr(export, "write_graph", broken)
    unbuilt = ISRSetting((8, 4, 2, 1), (2, 2, 2))
    assert seg.set_isr(unbuilt) == unbuilt
    deadline = time.monotonic() + 30
    while seg.isr_control.state.error is None and time.monotonic() < deadline:
        time.sleep(0.02)
    state = seg.isr_control.state
    assert state.served == RATIO2 and state.pending is None
    assert state.error == f"ISR {unbuilt}: simulated export failure"
    assert state.requested == RATIO2  # the failed request gives way to what serves
    assert seg.predict(rgb).isr == RATIO2


# ---- real TensorRT ---------------------------------------------------------------------------------
@pytest.mark.tensorrt
@pytest.mark.skipif(not torch.cuda.is_available(), reason="TensorRT needs a CUDA GPU")
@pytest.mark.skipif(not tensorrt_available(), reason=NO_TENSORRT)
def test_real_tensorrt_engine_matches_torch(eda, graphs, image, tmp_path) -> None:
    from dense_perception.engines.tensorrt_engine import tensorrt_engine_for_network

    gpu_net = build_network(EDA)
    gpu_net.load_state_dict(eda.state_dict())
    gpu_net = gpu_net.cuda().eval()
    engine = tensorrt_engine_for_network(gpu_net, H, W, tmp_path, "fp32", "cuda", initial=TRAINING,
                                         graphs_folder=graphs)
    x = image.cuda()
    out = engine.infer(x)
    assert out.is_cuda and out.dtype == torch.float32
    with torch.no_grad():
        reference = gpu_net(x)
    torch.testing.assert_close(out, reference, rtol=1e-3, atol=1e-3)
    assert engine.request_isr(RATIO2).result(timeout=600) == RATIO2
    torch.testing.assert_close(engine.infer(x), torch_output(gpu_net, x, RATIO2), rtol=1e-3, atol=1e-3)
    again = tensorrt_engine_for_network(gpu_net, H, W, tmp_path, "fp32", "cuda", initial=TRAINING,
                                        graphs_folder=graphs)
    torch.testing.assert_close(again.infer(x), reference, rtol=1e-3, atol=1e-3)  # loaded from the cache
