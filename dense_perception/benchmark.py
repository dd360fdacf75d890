"""Benchmark machinery behind ``dense-perception bench``: latency, throughput, peak memory, MACs, and
how far each backend's output is from eager fp32.

Each measured configuration ("case") runs in a fresh subprocess, so its peak memory is its own
(peak resident set size on the CPU, ``torch.cuda.max_memory_allocated`` on CUDA). Cases of the same
network share weights made by the references' seeded rule (the shapes and cost of a real checkpoint).
The command runs the whole list of cases several rounds, interleaved, and pools each case's timings
over the rounds, so a machine whose speed drifts (a VM, thermal limits) slows every case alike and the
ratios between cases stay meaningful. The ISR settings of one network on one backend are also timed
side by side in one process, the settings in turn (:func:`measure_isr_interleaved`): the
frame-rate gain of an ISR setting is a ratio between two settings, and measured this way each pair of
forwards sees the same machine state.

Backends measured side by side:
- ``eager``: the network called directly in fp32 under ``torch.no_grad`` — the floor to beat (with
  PyTorch's default math: on CUDA its convolutions may use TF32);
- ``torch``: our torch engine (``TorchEngine``), at the case's ``precision`` (fp32 is IEEE float32;
  fp16/bf16 on CUDA under autocast);
- ``torch-compile``: the same with ``torch.compile``;
- ``onnxruntime``: the exported fp32 graph in ONNX Runtime;
- ``onnxruntime-int8``: the statically quantised graph (:mod:`.engines.quantize`), calibrated on the
  bundled sample photograph;
- ``transformers`` (DPT and SegFormer): Hugging Face's ``DPTForDepthEstimation`` /
  ``SegformerForSemanticSegmentation`` with the same weights (fp16/bf16 under the same autocast as ours).

End to end (``Case.end_to_end``): an image in, the result at the image's size out, through our API
(``DepthEstimator``, ``Segmenter`` with its label mode) or ``transformers``' DPT or SegFormer pipeline, each frame's
pre-processing, network and post-processing timed separately (:data:`STAGES`); the ISR settings of a
segmentation network are then timed in turn too, so the end-to-end ISR gain and the network-only gain
come from the same frames.

On a GPU :func:`measure_in_process` can also measure several cases in one process (``scripts/gpu_report.py``
does): the peak memory figure is then ``torch.cuda.max_memory_allocated`` since the case began.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .networks import ISRSetting, build_network, network_spec
from .networks.common import fill_reference_weights
from .networks.cost import count_cost

BACKENDS = ("eager", "torch", "torch-compile", "onnxruntime", "onnxruntime-int8", "transformers")
#: Backends whose graphs have a fixed batch of 1 (no throughput-at-batch figure).
FIXED_BATCH_ONE = ("onnxruntime", "onnxruntime-int8")
#: Backends of the end-to-end comparison (image in, depth at the image's size out).
END_TO_END_BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8", "transformers")


@dataclass(frozen=True)
class Case:
    """One configuration to measure."""

    network: str
    backend: str
    height: int
    width: int
    isr: str | None = None  # ISRSetting text (networks with ISR)
    batch: int = 4  # for the throughput figure
    device: str = "cpu"
    threads: int = 2
    #: time image → result (pre-processing + network + post-processing) on a camera frame of this
    #: (height, width) instead of the bare network; DPT, :data:`END_TO_END_BACKENDS`
    end_to_end: tuple[int, int] | None = None
    #: end to end: our network input is (height, width) instead of the official keep-aspect size
    fixed_input: bool = False
    #: ``torch``/``torch-compile``/``transformers``: fp32, or fp16/bf16 under autocast (CUDA); ``eager`` and
    #: the ``onnxruntime`` backends are fp32 here (int8 is the ``onnxruntime-int8`` backend)
    precision: str = "fp32"
    #: end to end, segmentation: the Segmenter's label mode (``official`` or ``fast``)
    label_mode: str = "official"

    @property
    def slug(self) -> str:
        """A file-name-safe identity of the case."""
        isr = ISRSetting.read(self.isr).slug if self.isr else "noisr"
        e2e = f"_e2e{self.end_to_end[0]}x{self.end_to_end[1]}{'f' if self.fixed_input else ''}" \
            if self.end_to_end else ""
        precision = "" if self.precision == "fp32" else f"_{self.precision}"
        labels = f"_{self.label_mode}" if self.end_to_end and self.segments else ""
        return (f"{self.network}_{self.backend}{precision}_{self.height}x{self.width}_{isr}_{self.device}"
                f"{e2e}{labels}").replace(":", "")

    @property
    def segments(self) -> bool:
        """Whether the network is a segmentation network (label modes apply end to end)."""
        return network_spec(self.network).task == "segmentation"

    @property
    def label(self) -> str:
        """The backend, with the precision where it is not fp32 (``torch fp16``)."""
        return self.backend if self.precision == "fp32" else f"{self.backend} {self.precision}"

    @property
    def isr_group(self) -> "Case":
        """The case without its ISR setting: cases with equal groups differ in the setting alone, and
        their frame rates compare (the "ISR fps gain")."""
        return replace(self, isr=None)


@dataclass
class Measurement:
    case: Case
    latency_ms: list[float] = field(default_factory=list)  # batch 1
    batch_ms: list[float] = field(default_factory=list)  # batch ``case.batch``
    peak_mib: float = float("nan")
    gmacs: float = float("nan")
    error: str | None = None
    #: DPT: mean |output - eager| / mean |eager|; EDAFormer: share of labels differing from eager.
    #: On the sample photograph; NaN for eager itself, or where eager's output is all zeros.
    deviation: float = float("nan")
    #: batch-1 timings taken in one process alternating with the other ISR settings of the same
    #: network and backend (:func:`measure_isr_interleaved`); empty when not measured
    interleaved_ms: list[float] = field(default_factory=list)
    #: end to end: each frame's time per stage (:data:`STAGES`), in the order of ``latency_ms``
    stage_ms: dict[str, list[float]] = field(default_factory=dict)
    #: end to end, ISR settings timed in turn: the stages of the frames of ``interleaved_ms``
    interleaved_stage_ms: dict[str, list[float]] = field(default_factory=dict)

    def merge(self, other: "Measurement") -> "Measurement":
        """This round's figures pooled with another round's of the same case."""
        if other.error:
            return other if not self.latency_ms else self
        if self.error or not self.latency_ms:
            return other
        stages = {stage: self.stage_ms.get(stage, []) + other.stage_ms.get(stage, [])
                  for stage in {**self.stage_ms, **other.stage_ms}}
        return Measurement(self.case, self.latency_ms + other.latency_ms, self.batch_ms + other.batch_ms,
                           max(self.peak_mib, other.peak_mib), self.gmacs, stage_ms=stages)

    def stage_p50(self, stage: str) -> float:
        """Median milliseconds of one stage of an end-to-end frame (NaN when not measured)."""
        times = self.stage_ms.get(stage)
        return statistics.median(times) if times else float("nan")

    def interleaved(self, stage: str | None = None) -> list[float]:
        """Milliseconds of the turns timed interleaved with the other ISR settings: whole frames (``stage``
        None) or one stage of them (empty when not measured)."""
        return self.interleaved_ms if stage is None else self.interleaved_stage_ms.get(stage, [])

    @property
    def p50(self) -> float:
        return statistics.median(self.latency_ms) if self.latency_ms else float("nan")

    @property
    def p90(self) -> float:
        return float(np.percentile(self.latency_ms, 90)) if self.latency_ms else float("nan")

    @property
    def fps(self) -> float:
        return 1000.0 / self.p50 if self.latency_ms else float("nan")

    @property
    def throughput(self) -> float:
        """Images per second at batch ``case.batch``."""
        return self.case.batch * 1000.0 / statistics.median(self.batch_ms) if self.batch_ms else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "p50_ms": self.p50, "p90_ms": self.p90, "fps": self.fps,
                "throughput_ips": self.throughput}


def _timed(fn: Callable[[], Any], warmup: int, runs: int, sync: Callable[[], None]) -> list[float]:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


#: The stages of an end-to-end frame, timed separately.
STAGES = ("preprocess", "network", "postprocess")


def staged(steps: Sequence[Callable[[Any], Any]], sync: Callable[[], None]) -> Callable[[Any], dict[str, float]]:
    """A frame function: runs ``steps`` (one per :data:`STAGES`, each taking the previous one's result,
    the first the image) and returns each stage's milliseconds and their ``total``; ``sync`` waits for
    queued device work after each stage, so a stage's time is its own."""
    def frame(image: Any) -> dict[str, float]:
        times, value = {}, image
        for stage, step in zip(STAGES, steps, strict=True):
            started = time.perf_counter()
            value = step(value)
            sync()
            times[stage] = (time.perf_counter() - started) * 1e3
        times["total"] = sum(times[stage] for stage in STAGES)
        return times
    return frame


def time_frames(frame: Callable[[], dict[str, float]], warmup: int, runs: int) -> dict[str, list[float]]:
    """Stage and total milliseconds of ``runs`` frames after ``warmup``."""
    for _ in range(warmup):
        frame()
    timings: dict[str, list[float]] = {}
    for _ in range(runs):
        for key, value in frame().items():
            timings.setdefault(key, []).append(value)
    return timings


def _synchronizer(device: str) -> Callable[[], None]:
    """What waits for queued work on ``device`` before a clock is read (nothing on the CPU)."""
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def _network(case: Case) -> torch.nn.Module:
    net = build_network(case.network)
    net.load_state_dict(fill_reference_weights(net))
    return _with_isr(net, case)


def _with_isr(net: torch.nn.Module, case: Case) -> torch.nn.Module:
    if case.isr and hasattr(net, "set_isr"):
        net.set_isr(ISRSetting.read(case.isr))  # validated by the network's own scheme
    return net


#: Backends that run a precision other than fp32 (on CUDA, under autocast).
MIXED_PRECISION_BACKENDS = ("torch", "torch-compile", "transformers")


def _autocast(case: Case) -> Any:
    """Autocast for the case's reduced precision (the policy our torch engine uses), else nothing."""
    from .engines.torch_engine import AUTOCAST_DTYPES

    if case.precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(case.device).type, dtype=AUTOCAST_DTYPES[case.precision])


def _runner(case: Case, net: torch.nn.Module, workdir: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function running one batch through the case's backend."""
    device = torch.device(case.device)
    if case.precision != "fp32" and case.backend not in MIXED_PRECISION_BACKENDS:
        raise ValueError(f"{case.backend} runs fp32 here; {case.precision} runs on "
                         f"{', '.join(MIXED_PRECISION_BACKENDS)}")
    if case.backend == "eager":
        net = net.to(device)

        def eager(x: torch.Tensor) -> Any:
            with torch.no_grad():
                return net(x.to(device))
        return eager
    if case.backend in ("torch", "torch-compile"):
        from .engines.torch_engine import TorchEngine

        return TorchEngine(net, device, case.precision, compile=case.backend == "torch-compile").infer
    if case.backend in ("onnxruntime", "onnxruntime-int8"):
        from .engines.onnx_engine import onnx_engine_for_network

        precision = "int8" if case.backend.endswith("int8") else "fp32"
        return onnx_engine_for_network(net, case.height, case.width, workdir, precision, threads=case.threads).infer
    if case.backend == "transformers":
        model, output = _transformers_peer(net)
        model = model.to(device).eval()

        def hf(x: torch.Tensor) -> Any:
            with torch.no_grad(), _autocast(case):
                return getattr(model(pixel_values=x.to(device)), output)
        return hf
    raise ValueError(f"unknown backend {case.backend!r}; choose from {', '.join(BACKENDS)}")


def _transformers_peer(net: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """Hugging Face's implementation of ``net``'s architecture carrying its weights, and the name of its
    output: ``DPTForDepthEstimation`` (DPT) or ``SegformerForSemanticSegmentation`` (SegFormer)."""
    family = network_spec(net.name).family
    if family == "dpt":
        from .networks.dpt_hf import hf_model_with_weights_of

        return hf_model_with_weights_of(net), "predicted_depth"
    if family == "segformer":
        from .networks.sra.hf import hf_segformer_with_weights_of

        return hf_segformer_with_weights_of(net), "logits"
    raise ValueError(f"transformers has no peer of {net.name} here (DPT and SegFormer only)")


def _end_to_end_runner(case: Case, net: torch.nn.Module, workdir: str) -> Callable[[np.ndarray], dict[str, float]]:
    """Image → result at the image's size, each implementation with its own documented pipeline, as a
    :func:`staged` frame function: ours through :class:`~.api.DepthEstimator` or :class:`~.api.Segmenter`
    (whole-image; the stages of their ``predict``: ``preprocess``, the engine for the input size, the
    post-processing; the official input size -- DPT's keep-aspect size, mmseg's aligned keep-ratio
    resize -- or ``case.height``×``case.width`` with ``fixed_input``; their own initial weights -- the
    arithmetic, and so the time, is that of any checkpoint), ``transformers`` through
    ``DPTImageProcessor`` (it squashes to 384×384) or ``SegformerImageProcessor`` (512×512) and their
    post-processing."""
    device = torch.device(case.device)
    sync = _synchronizer(case.device)
    if case.backend == "transformers":
        model, _ = _transformers_peer(net)
        model = model.to(device).eval()

        def network(inputs: Any) -> tuple[Any, Any]:
            with torch.no_grad(), _autocast(case):
                return inputs, model(**inputs)
        if case.segments:
            from transformers import SegformerImageProcessor

            seg_processor = SegformerImageProcessor()
            return lambda image: staged([
                lambda _: seg_processor(images=image, return_tensors="pt").to(device),
                network,
                lambda done: seg_processor.post_process_semantic_segmentation(
                    done[1], target_sizes=[image.shape[:2]])[0].cpu().numpy()], sync)(image)
        from transformers import DPTImageProcessor

        processor = DPTImageProcessor()
        return lambda image: staged([
            lambda _: processor(images=image, return_tensors="pt").to(device),
            network,
            lambda done: processor.post_process_depth_estimation(done[1], target_sizes=[image.shape[:2]])[0][
                "predicted_depth"].cpu().numpy()], sync)(image)
    from .api import DepthEstimator, Segmenter
    from .pipeline import postprocess

    torch.manual_seed(0)  # the same initial weights in every round, so cached graphs are reused
    if case.backend not in END_TO_END_BACKENDS:
        raise ValueError(f"end to end runs {', '.join(END_TO_END_BACKENDS)}, not {case.backend}")
    backend, _, precision = case.backend.partition("-")
    options = dict(backend=backend, precision=precision or case.precision, device=device, engine_dir=workdir,
                   input_size=(case.height, case.width) if case.fixed_input else None)
    if case.segments:
        predictor: Any = Segmenter(case.network, label_mode=case.label_mode, inference="whole",
                                   isr=ISRSetting.read(case.isr) if case.isr else 1, **options)

        def finish(done: tuple[Any, torch.Tensor]) -> np.ndarray:
            prepared, logits = done
            return postprocess.labels_from_logits(logits, prepared.network_size, prepared.image_size,
                                                  predictor.label_mode)[0]
    else:
        predictor = DepthEstimator(case.network, **options)

        def finish(done: tuple[Any, torch.Tensor]) -> np.ndarray:
            prepared, raw = done
            return postprocess.depth_to_image(raw, prepared.image_size, predictor.output)
    return staged([predictor.preprocess,
                   lambda prepared: (prepared, predictor.engine_for(prepared.network_size).infer(prepared.tensor)),
                   finish], sync)


def camera_frame(height: int, width: int) -> np.ndarray:
    """The bundled sample photograph resized to ``height`` x ``width``: an end-to-end input whose labels
    have real regions and boundaries (the post-processing cost depends on them)."""
    from PIL import Image

    from .io.sources import read_image_rgb, sample_image

    with sample_image() as path:
        image = read_image_rgb(path)
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def network_input_size(case: Case) -> tuple[int, int]:
    """The size the network runs at: the case's, except end to end, where ``transformers`` squashes to
    384×384 (DPT) or 512×512 (SegFormer) and ours keeps the official size unless ``fixed_input``."""
    spec = network_spec(case.network)
    if case.end_to_end and case.backend == "transformers":
        return (384, 384) if spec.task == "depth" else (512, 512)
    if not case.end_to_end or case.fixed_input:
        return case.height, case.width
    from .pipeline.preprocess import network_size_with

    return network_size_with(spec.preprocessing, *case.end_to_end)


def sample_input(case: Case) -> torch.Tensor:
    """The bundled sample photograph, pre-processed for the case's network at the case's size."""
    from .io.sources import read_image_rgb, sample_image
    from .pipeline.preprocess import preprocess_with

    spec = network_spec(case.network)
    with sample_image() as path:
        image = read_image_rgb(path)
    return preprocess_with(spec.preprocessing, image, (case.height, case.width)).tensor


def deviation(output: np.ndarray, reference: np.ndarray, task: str) -> float:
    """How far a backend's output is from eager fp32's (see :attr:`Measurement.deviation`)."""
    if output.shape != reference.shape:
        return float("nan")
    if task == "segmentation":
        return float((output.argmax(1) != reference.argmax(1)).mean())
    scale = float(np.abs(reference).mean())
    return float(np.abs(output - reference).mean() / scale) if scale > 0 else float("nan")


def measure_in_process(case: Case, warmup: int, runs: int, workdir: str,
                       net: torch.nn.Module | None = None) -> Measurement:
    """Measure one case in this process (``measure`` wraps it in a subprocess). Graphs are cached in
    ``workdir``; bare-network cases leave their output on the sample photograph there as
    ``<case.slug>.npy`` for :func:`deviation`. ``net``: the case's network with the references' weights,
    made by the caller (a fresh copy per case: backends move and convert it); None = build it here."""
    torch.set_num_threads(case.threads)
    if case.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(case.device)
    result = Measurement(case)
    net = _network(case) if net is None else _with_isr(net, case)
    result.gmacs = count_cost(net, *network_input_size(case)).total_macs / 1e9
    sync = _synchronizer(case.device)
    gen = torch.Generator().manual_seed(7)
    x1 = torch.randn(1, 3, case.height, case.width, generator=gen)
    xb = torch.randn(case.batch, 3, case.height, case.width, generator=gen)
    if case.end_to_end:
        image = camera_frame(*case.end_to_end)
        frame = _end_to_end_runner(case, net, workdir)
        timings = time_frames(partial(frame, image), warmup, runs)
        result.latency_ms = timings.pop("total")
        result.stage_ms = timings
        result.peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return result
    run = _runner(case, net, workdir)
    result.latency_ms = _timed(lambda: run(x1), warmup, runs, sync)
    if case.batch > 1 and case.backend not in FIXED_BATCH_ONE:
        result.batch_ms = _timed(lambda: run(xb), 1, max(2, runs // 3), sync)
    sample_output = os.path.join(workdir, case.slug + ".npy")
    if not os.path.exists(sample_output):  # the same in every round: computed once
        output = run(sample_input(case).to(device=case.device))
        np.save(sample_output, output.float().cpu().numpy())
    if case.device.startswith("cuda"):
        result.peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        result.peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def measure_isr_interleaved(cases: list[Case], warmup: int, runs: int, workdir: str,
                            net: torch.nn.Module | None = None) -> list[list[float]]:
    """Batch-1 timings of ``cases`` -- the ISR settings of one network, backend and size -- in this
    process, the cases in turn, ``runs`` turns after ``warmup``: the settings' ratios are not disturbed
    by drift between processes. In each turn a case runs one untimed forward, then the timed one, so
    it is timed with its weights and buffers warm, as when a node runs one setting frame after frame
    (an ONNX Runtime session timed right after another session's forward runs about a third slower).
    Each case gets its own runner (graphs come from ``workdir`` as in :func:`measure_in_process`) on its own
    network: a copy of ``net`` (the references' weights, made by the caller), or built here when None."""
    if len({c.isr_group for c in cases}) != 1 or any(c.end_to_end or not c.isr for c in cases):
        raise ValueError("interleaved ISR timing takes ISR settings of one network, backend and size")
    torch.set_num_threads(cases[0].threads)
    x1 = torch.randn(1, 3, cases[0].height, cases[0].width, generator=torch.Generator().manual_seed(7))
    nets = [_network(case) if net is None else _with_isr(copy.deepcopy(net), case) for case in cases]
    runners = [_runner(case, case_net, workdir) for case, case_net in zip(cases, nets)]
    return time_in_turn([partial(run, x1) for run in runners], warmup, runs, _synchronizer(cases[0].device))


def measure_frames_interleaved(cases: list[Case], warmup: int, runs: int, workdir: str,
                               ) -> list[dict[str, list[float]]]:
    """:func:`measure_isr_interleaved` for end-to-end cases (the ISR settings of one segmentation network,
    backend, label mode and image size): whole frames in turn, each timed per stage, so the end-to-end
    gain of a setting and its network-only gain come from the same frames. Per case: each stage's and
    the total's milliseconds per turn."""
    if len({c.isr_group for c in cases}) != 1 or any(not c.end_to_end or not c.isr for c in cases):
        raise ValueError("interleaved end-to-end timing takes ISR settings of one network, backend, label mode "
                         "and image size")
    torch.set_num_threads(cases[0].threads)
    image = camera_frame(*cases[0].end_to_end)
    frames = [partial(_end_to_end_runner(case, _network(case), workdir), image) for case in cases]
    timings: list[dict[str, list[float]]] = [{} for _ in cases]
    for turn in range(warmup + runs):
        for frame, timed in zip(frames, timings):
            frame()  # warm, right after itself
            if turn >= warmup:
                for key, value in frame().items():
                    timed.setdefault(key, []).append(value)
            else:
                frame()
    return timings


def time_in_turn(calls: Sequence[Callable[[], Any]], warmup: int, turns: int,
                 sync: Callable[[], None] = lambda: None) -> list[list[float]]:
    """Milliseconds per call of each of ``calls``, called in turn: ``warmup`` untimed turns, then
    ``turns`` turns in which each call runs once untimed and once timed (warm, right after itself).
    Compare two calls with :func:`paired_ratio`."""
    times: list[list[float]] = [[] for _ in calls]
    for turn in range(warmup + turns):
        for call, timings in zip(calls, times):
            call()
            sync()
            t0 = time.perf_counter()
            call()
            sync()
            if turn >= warmup:
                timings.append((time.perf_counter() - t0) * 1e3)
    return times


def paired_ratio(numerator_ms: Sequence[float], denominator_ms: Sequence[float]) -> float:
    """The median over turns of each turn's time ratio, for two calls timed by :func:`time_in_turn`: the
    two times of a turn ran back to back, so drift of the machine between turns cancels."""
    return statistics.median(a / b for a, b in zip(numerator_ms, denominator_ms, strict=True))


def _in_subprocess(request: Any, warmup: int, runs: int, timeout: float,
                   workdir: str | os.PathLike) -> dict[str, Any]:
    """Run ``_main`` on a JSON request in a fresh interpreter: its last JSON line, or ``{"error": …}``."""
    cmd = [sys.executable, "-m", "dense_perception.benchmark", json.dumps(request), str(warmup), str(runs),
           os.fspath(workdir)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])


def measure(case: Case, warmup: int = 2, runs: int = 10, timeout: float = 1800,
            workdir: str | os.PathLike | None = None) -> Measurement:
    """Measure one case in a fresh subprocess; failures come back as ``Measurement.error``.
    ``workdir`` keeps exported graphs and sample outputs between calls (None = a temporary folder)."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="dp_bench_") as folder:
            return measure(case, warmup, runs, timeout, folder)
    data = _in_subprocess(asdict(case), warmup, runs, timeout, workdir)
    if data.get("error"):
        return Measurement(case, error=data["error"])
    return Measurement(case, data["latency_ms"], data["batch_ms"], data["peak_mib"], data["gmacs"],
                       stage_ms=data.get("stage_ms", {}))


def measure_isr(cases: list[Case], warmup: int, runs: int, workdir: str | os.PathLike,
                timeout: float = 1800) -> list[dict[str, list[float]]] | str:
    """:func:`measure_isr_interleaved` (bare networks) or :func:`measure_frames_interleaved` (end to end) in a
    fresh subprocess: per case its timings by stage (``total`` only for bare networks), or the error text."""
    data = _in_subprocess([asdict(case) for case in cases], warmup, runs, timeout, workdir)
    return data.get("error") or data["interleaved"]


def case_from_json(data: dict[str, Any]) -> Case:
    if data.get("end_to_end") is not None:
        data = {**data, "end_to_end": tuple(data["end_to_end"])}
    return Case(**data)


def _main(argv: list[str]) -> None:
    """Subprocess entry: a JSON case (measure it) or a JSON list of cases (time them interleaved)."""
    request = json.loads(argv[0])
    warmup, runs, workdir = int(argv[1]), int(argv[2]), argv[3]
    if isinstance(request, list):
        cases = [case_from_json(data) for data in request]
        if cases[0].end_to_end:
            timings = measure_frames_interleaved(cases, warmup, runs, workdir)
        else:
            timings = [{"total": timed} for timed in measure_isr_interleaved(cases, warmup, runs, workdir)]
        print(json.dumps({"interleaved": timings}))
        return
    print(json.dumps(measure_in_process(case_from_json(request), warmup, runs, workdir).to_json()))


if __name__ == "__main__":
    _main(sys.argv[1:])
