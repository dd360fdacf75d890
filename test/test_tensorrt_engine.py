"""The TensorRT backend against a fake ``tensorrt`` module and a stand-in CUDA device (``fake_tensorrt.py``),
the background ISR switch (fake engines, then real ONNX Runtime sessions), and -- where TensorRT and a
GPU exist (``pytest -m tensorrt``) -- the real thing."""
from __future__ import annotations

import ast
import gc
import logging
import threading
import time
import tracemalloc
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from onnx import TensorProto

from dense_perception.api import Segmenter
from dense_perception.cli import main as cli_main
from dense_perception.engines import tensorrt_engine as trt_module
from dense_perception.engines.base import Engine, EngineError
from dense_perception.engines.cache import EngineCache, TimingCacheKey
from dense_perception.engines.switching import SwitchingEngine, switching_engine_for_network
from dense_perception.engines.tensorrt_engine import (
    TensorRTBuilder, TensorRTEngine, TensorRTFactory, TensorRTRuntime, tensorrt_available,
)
from dense_perception.networks import ISRSetting, build_network
from dense_perception.networks.common import fill_reference_weights
from fake_tensorrt import FakeCuda, FakeTensorRT, FakeTensorRTMisuse, tiny_onnx
from gpu_support import FP16_BOUND, tensorrt_marks, with_marks

EDA = "edaformer_t_ade20k"
H = W = 64
TRAINING = ISRSetting()
RATIO2 = ISRSetting.from_ratio(2)
ENGINES = Path(trt_module.__file__).parent


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
    return TensorRTFactory(net, H, W, folder, precision, fake.cuda, builder=TensorRTBuilder(cache=cache, trt=fake,
                           tick_seconds=tick), runtime=TensorRTRuntime(fake.cuda, trt=fake), graphs_folder=graphs)


def assert_filled_with_mean(out: torch.Tensor, x: torch.Tensor) -> None:
    """The fake engine's answer: the input's mean everywhere (only once its stream ran the work)."""
    assert torch.allclose(out, x.mean().expand_as(out)), "the output was read before the engine's work ran"


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
    assert out.shape == (1, 150, H // 8, W // 8)
    assert_filled_with_mean(out, image)
    # a new process: same key -> the engine comes from disk
    again = fake_factory(eda, tmp_path, graphs, fake)(TRAINING)
    assert len(fake.builds) == 1 and again.path == engine.path and again.path.exists()
    # the timing cache was saved and is handed to the next build
    key = TimingCacheKey("tensorrt", "10.3.0", "Fake GPU", "8.7")
    assert EngineCache(tmp_path).read(key) == fake.timing_header() + b"+"
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
    builder.build(tiny_onnx(TensorProto.FLOAT16), "fp16", "tiny fp16", fake.cuda)
    record = fake.builds[-1]
    assert record["strongly_typed"] and record["fp16_tensors"] and "FP16" not in record["flags"]
    assert record["io"]["input"][2] == "FLOAT"  # float32 input and output around the fp16 graph
    factory = fake_factory(eda, tmp_path, graphs, fake, precision="fp16")
    assert factory.graphs.precision == "fp16" and factory.key(TRAINING).precision == "fp16"
    assert factory.key(TRAINING) != fake_factory(eda, tmp_path, graphs, fake).key(TRAINING)


def test_build_progress_lines(caplog) -> None:
    fake = FakeTensorRT(build_seconds=0.35)
    with caplog.at_level(logging.INFO, logger=trt_module.__name__):
        TensorRTBuilder(trt=fake, tick_seconds=0.1).build(tiny_onnx(), "fp32", "tiny 4x4", fake.cuda)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("building TensorRT engine tiny 4x4; this can take several minutes")
    assert any("Building engine (2 steps)" in line for line in lines)
    assert sum("still building TensorRT engine tiny 4x4" in line for line in lines) >= 2
    assert lines[-1].startswith("built TensorRT engine tiny 4x4:") and " MB in " in lines[-1]


def test_parser_and_missing_library_errors(monkeypatch) -> None:
    fake = FakeTensorRT()
    with pytest.raises(EngineError, match="ONNX parser refused.*cannot parse"):
        TensorRTBuilder(trt=fake).build(b"not onnx", "fp32", "junk", fake.cuda)
    with pytest.raises(EngineError, match="ONNX parser refused.*No importer registered for op: FusedMatMul"):
        TensorRTBuilder(trt=fake).build(tiny_onnx(op="FusedMatMul", domain="com.microsoft"), "fp32", "ort", fake.cuda)
    with pytest.raises(EngineError, match="ONNX parser refused.*No importer registered for op: DFT"):
        TensorRTBuilder(trt=fake).build(tiny_onnx(op="DFT"), "fp32", "dft", fake.cuda)
    with pytest.raises(EngineError, match="could not deserialize"):
        TensorRTRuntime(fake.cuda, trt=fake).load(b"junk")
    if not tensorrt_available():
        with pytest.raises(EngineError, match="TensorRT is not installed"):
            TensorRTBuilder()
        with pytest.raises(EngineError, match="TensorRT is not installed"):
            Segmenter(EDA, backend="tensorrt")


def test_a_cpu_device_is_refused(eda, graphs, tmp_path) -> None:
    """Production code takes CUDA devices only; the tests' CPU stand-in is a device object of its own."""
    fake = FakeTensorRT()
    with pytest.raises(EngineError, match="needs a CUDA device, got cpu"):
        TensorRTRuntime("cpu", trt=fake)
    with pytest.raises(EngineError, match="needs a CUDA device, got cpu"):
        TensorRTFactory(eda, H, W, tmp_path, "fp32", "cpu", builder=TensorRTBuilder(trt=fake),
                        runtime=TensorRTRuntime(fake.cuda, trt=fake), graphs_folder=graphs)


def test_an_engine_for_another_gpu_is_built_loaded_run_and_released_there(eda, graphs, image, tmp_path) -> None:
    fake = FakeTensorRT(FakeCuda(index=1))
    assert fake.cuda.current == 0  # the calling thread's current device is GPU 0 throughout
    engine = fake_factory(eda, tmp_path, graphs, fake)(TRAINING)
    assert_filled_with_mean(engine.infer(image), image)
    reloaded = fake_factory(eda, tmp_path, graphs, fake)(TRAINING)  # from the cache
    assert_filled_with_mean(reloaded.infer(image), image)
    del engine, reloaded
    gc.collect()
    assert fake.builds[0]["device"] == 1
    for what in ("build", "deserialize", "context", "execute", "release"):
        assert fake.devices(what) == {1}, f"{what} ran with devices {fake.devices(what)} current"
    assert fake.cuda.current == 0 and fake.violations == []


def test_frames_run_on_the_engines_stream_synchronised_once_each(eda, graphs, tmp_path) -> None:
    fake = FakeTensorRT()
    engine = fake_factory(eda, tmp_path, graphs, fake)(TRAINING)
    frames = [torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(i)) for i in range(5)]
    for frame in frames:
        assert_filled_with_mean(engine.infer(frame), frame)  # ready without the caller synchronising
    (stream,) = fake.cuda.streams.values()  # one stream, the engine's own (not the default stream 0)
    assert stream.cuda_stream != 0 and stream.synchronizations == len(frames) and not stream.pending
    assert fake.cuda.default_stream.synchronizations == 0


def test_addresses_are_aligned_and_refusals_raise(eda, graphs, tmp_path) -> None:
    fake = FakeTensorRT()
    engine = fake_factory(eda, tmp_path, graphs, fake)(TRAINING)
    storage = torch.randn(1 + 3 * H * W)
    view = storage[1:].view(1, 3, H, W)  # contiguous, 4 bytes off its allocation: not aligned
    assert view.data_ptr() % fake.cuda.alignment
    assert_filled_with_mean(engine.infer(view), view)
    fake.refuse_addresses = True
    with pytest.raises(EngineError, match="TensorRT refused address 0x[0-9a-f]+ for tensor 'image'"):
        engine.infer(view)


def test_a_timing_cache_tensorrt_refuses_is_replaced(tmp_path, caplog) -> None:
    fake = FakeTensorRT()
    cache = EngineCache(tmp_path)
    key = TimingCacheKey("tensorrt", "10.3.0", "Fake GPU", "8.7")
    cache.write(key, b"TC 10.2.0 Fake GPU|+++")  # made by another TensorRT: set_timing_cache says False
    with caplog.at_level(logging.WARNING):
        TensorRTBuilder(cache=cache, trt=fake).build(tiny_onnx(), "fp32", "tiny", fake.cuda)
    assert "refused the stored timing cache" in caplog.text
    assert fake.builds[-1]["timing_in"] == ""  # built with a fresh cache, not with none
    assert cache.read(key) == fake.timing_header() + b"+"


def test_release_synchronises_first(eda, graphs, image, tmp_path) -> None:
    fake = FakeTensorRT()
    engine = fake_factory(eda, tmp_path, graphs, fake)(TRAINING)
    execution = engine.execution
    # an enqueue still pending when the engine is released (as a frame would leave it without the
    # per-frame synchronisation): close() waits for the stream, then lets the context go
    out = torch.zeros(execution.output.shape)
    context = execution._context
    assert context.set_tensor_address("image", image.data_ptr()) and context.set_tensor_address("logits", out.data_ptr())
    execution._stream.wait_stream(fake.cuda.current_stream())
    assert context.execute_async_v3(execution._stream.cuda_stream)
    del context
    engine.close()
    gc.collect()
    assert fake.violations == [] and fake.devices("release") == {0}
    assert_filled_with_mean(out, image)
    with pytest.raises(EngineError, match="released"):
        engine.infer(image)
    # a frame in flight in another thread finishes before close() releases
    fake.kernel_seconds = 0.3
    busy = fake_factory(eda, tmp_path, graphs, fake)(TRAINING)
    results: list[torch.Tensor] = []
    worker = threading.Thread(target=lambda: results.append(busy.infer(image)))
    worker.start()
    time.sleep(0.1)
    busy.close()
    worker.join()
    assert_filled_with_mean(results[0], image)
    assert fake.violations == []


def test_evicted_engines_are_released_with_nothing_pending(eda, graphs, image, tmp_path) -> None:
    fake = FakeTensorRT()
    switching = SwitchingEngine(fake_factory(eda, tmp_path, graphs, fake), TRAINING, keep=1)
    for setting in (RATIO2, TRAINING, RATIO2):
        switching.request_isr(setting).result(timeout=120)
        assert_filled_with_mean(switching.infer(image), image)
    switching.close()
    gc.collect()
    releases = [device for what, device in fake.events if what == "release"]
    assert len(releases) == 3 and fake.violations == []  # three engines evicted, keep=1


def test_the_fake_refuses_what_tensorrt_refuses() -> None:
    fake = FakeTensorRT()
    flag = fake.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    builder = fake.Builder(None)
    weak = builder.create_network(0)
    assert fake.OnnxParser(weak, None).parse(tiny_onnx(TensorProto.FLOAT16))
    config = builder.create_builder_config()
    assert config.set_timing_cache(config.create_timing_cache(b""), False)
    assert builder.build_serialized_network(weak, config) is None  # weakly typed: we rely on strong typing
    strong = builder.create_network(1 << int(flag))
    assert fake.OnnxParser(strong, None).parse(tiny_onnx(TensorProto.FLOAT16))
    config.set_flag(fake.BuilderFlag.FP16)
    assert builder.build_serialized_network(strong, config) is None  # precision flags on a strong network
    assert not config.set_timing_cache(config.create_timing_cache(b"TC 9.0 Other GPU|"), False)
    assert not fake.OnnxParser(strong, None).parse(tiny_onnx(op="DFT"))
    config.clear_flag(fake.BuilderFlag.FP16)
    engine = fake.Runtime(None).deserialize_cuda_engine(builder.build_serialized_network(strong, config))
    context = engine.create_execution_context()
    stream = fake.cuda.new_stream()
    stream.wait_stream(fake.cuda.current_stream())
    x, out = torch.ones(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    assert not context.set_tensor_address("no such tensor", x.data_ptr())
    assert not context.set_tensor_address("image", x.data_ptr() + 4)  # misaligned
    assert context.set_tensor_address("image", x.data_ptr())
    assert not context.execute_async_v3(stream.cuda_stream)  # the output's address is not set
    assert context.set_tensor_address("logits", out.data_ptr())
    with pytest.raises(FakeTensorRTMisuse, match="legacy default stream"):
        context.execute_async_v3(0)
    fake.cuda.current = 2  # another device current than the context's (0)
    with pytest.raises(FakeTensorRTMisuse, match="device 2 current; the context is on 0"):
        context.execute_async_v3(stream.cuda_stream)
    fake.cuda.current = 0
    assert context.execute_async_v3(stream.cuda_stream)
    with pytest.raises(FakeTensorRTMisuse, match="did not wait"):
        context.execute_async_v3(stream.cuda_stream)  # no wait for the producing stream since the last one
    assert (out == 0).all()  # nothing ran yet: the work runs when the stream is synchronised
    del context
    gc.collect()
    assert fake.violations == ["execution context destroyed with 1 enqueue(s) pending"]
    stream.synchronize()
    assert (out == 0).all()  # the dead context's work never touches its buffers


def test_hot_swap_machinery_imports_one_way() -> None:
    """No two modules of the engines package import each other (switching -> tensorrt_engine only)."""
    imports = {path.stem: _relative_imports(path) for path in ENGINES.glob("*.py")}
    assert "tensorrt_engine" in imports["switching"]
    pairs = sorted((a, b) for a, targets in imports.items() for b in targets if a in imports.get(b, ()) and a < b)
    assert pairs == [], f"modules importing each other: {pairs}"


def _relative_imports(path: Path) -> set[str]:
    """Sibling modules ``path`` imports anywhere (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


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


# ---- real TensorRT (pytest -m tensorrt) -----------------------------------------------------------
def gpu_copy(net: torch.nn.Module, device: str = "cuda") -> torch.nn.Module:
    copy = build_network(EDA)
    copy.load_state_dict(net.state_dict())
    return copy.to(device).eval()


@with_marks(tensorrt_marks())
def test_real_tensorrt_engine_matches_torch(eda, graphs, image, tmp_path) -> None:
    gpu_net = gpu_copy(eda)
    engine = switching_engine_for_network("tensorrt", gpu_net, H, W, tmp_path, "fp32", "cuda", initial=TRAINING,
                                          graphs_folder=graphs)
    x = image.cuda()
    out = engine.infer(x)
    assert out.is_cuda and out.dtype == torch.float32
    with torch.no_grad():
        reference = gpu_net(x)
    torch.testing.assert_close(out, reference, rtol=1e-3, atol=1e-3)
    assert engine.request_isr(RATIO2).result(timeout=600) == RATIO2
    torch.testing.assert_close(engine.infer(x), torch_output(gpu_net, x, RATIO2), rtol=1e-3, atol=1e-3)
    again = switching_engine_for_network("tensorrt", gpu_net, H, W, tmp_path, "fp32", "cuda", initial=TRAINING,
                                         graphs_folder=graphs)
    torch.testing.assert_close(again.infer(x), reference, rtol=1e-3, atol=1e-3)  # loaded from the cache


@with_marks(tensorrt_marks())
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_real_tensorrt_agrees_with_onnxruntime(eda, graphs, image, tmp_path, precision) -> None:
    """The engine TensorRT builds from our exported ONNX graph against ONNX Runtime (CPU) on that graph."""
    from golden_cases import assert_close_rel
    from dense_perception.engines.onnx_engine import OnnxRuntimeEngine

    if precision == "fp16":
        pytest.importorskip("onnxconverter_common", reason="the fp16 graph needs onnxconverter-common")
    factory = TensorRTFactory(eda, H, W, tmp_path, precision, "cuda", graphs_folder=graphs)
    engine = factory(TRAINING)
    fp32_graph = TensorRTFactory(eda, H, W, tmp_path, "fp32", "cuda", graphs_folder=graphs).graphs(TRAINING)
    reference = OnnxRuntimeEngine(fp32_graph, providers=["CPUExecutionProvider"]).infer(image)
    out = engine.infer(image.cuda()).cpu()
    bound = 1e-4 if precision == "fp32" else FP16_BOUND
    assert_close_rel(out.numpy(), reference.numpy(), bound, f"TensorRT {precision} vs ONNX Runtime fp32")


@with_marks(tensorrt_marks(gpus=2))
def test_real_tensorrt_engine_on_the_second_gpu(eda, graphs, image, tmp_path) -> None:
    torch.cuda.set_device(0)
    engine = TensorRTFactory(eda, H, W, tmp_path, "fp32", "cuda:1", graphs_folder=graphs)(TRAINING)
    before = torch.cuda.memory_allocated(0)
    out = engine.infer(image.to("cuda:1"))
    assert out.device == torch.device("cuda", 1) and torch.cuda.current_device() == 0
    assert torch.cuda.memory_allocated(0) == before  # nothing of the frame landed on GPU 0
    with torch.no_grad():
        reference = gpu_copy(eda, "cuda:1")(image.to("cuda:1"))
    torch.testing.assert_close(out, reference, rtol=1e-3, atol=1e-3)


@with_marks(tensorrt_marks())
def test_real_tensorrt_switches_isr_in_the_background_while_streaming(eda, graphs, tmp_path) -> None:
    """Frames keep coming while the engine for another ISR setting is built; each output is one setting's,
    and the stream swaps once, from the old setting to the new one."""
    gpu_net = gpu_copy(eda)
    switching = switching_engine_for_network("tensorrt", gpu_net, H, W, tmp_path, "fp32", "cuda",
                                             initial=TRAINING, graphs_folder=graphs)
    generator = torch.Generator().manual_seed(3)
    frames = [torch.randn(1, 3, H, W, generator=generator).cuda() for _ in range(4)]
    expected = {setting: [torch_output(gpu_net, frame, setting) for frame in frames] for setting in (TRAINING, RATIO2)}
    served: list[ISRSetting | None] = []
    stop = threading.Event()

    def stream() -> None:
        index = 0
        while not stop.is_set():
            out = switching.infer(frames[index % len(frames)])
            matches = [setting for setting, outputs in expected.items()
                       if torch.allclose(out, outputs[index % len(frames)], rtol=1e-3, atol=1e-3)]
            served.append(matches[0] if len(matches) == 1 else None)
            index += 1

    feeder = threading.Thread(target=stream)
    feeder.start()
    try:
        assert switching.request_isr(RATIO2).result(timeout=600) == RATIO2
        time.sleep(0.5)
    finally:
        stop.set()
        feeder.join(timeout=60)
    assert None not in served, "a frame matched neither setting"
    swap = served.index(RATIO2)
    assert swap >= 1 and served == [TRAINING] * swap + [RATIO2] * (len(served) - swap)
