"""The Python API the ROS nodes and the command line call: image in, depth or labels out.

    from dense_perception.api import DepthEstimator, Segmenter
    depth = DepthEstimator("dpt_hybrid_midas", checkpoint="models/dpt_hybrid-midas-501f0c75.pt")
    seg = Segmenter("edaformer_t_ade20k", checkpoint="models/edaformer_t_ade20k.pth")
    result = depth.predict(image_rgb)          # result.depth: float32 HxW
    labels = seg.predict(image_rgb).labels     # uint8 HxW (uint16 above 256 classes)
    seg.set_isr(ratio=2)                       # faster from the next frame on

Both share one machinery (:class:`_Predictor`): network construction and strict checkpoint loading,
engine choice, one pre-processing function per family and one post-processing module.
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .defaults import DEFAULT_DEPTH_NETWORK, DEFAULT_SEG_NETWORK
from .engines.base import Engine, EngineError, check_precision
from .engines.cache import default_engine_dir
from .engines.torch_engine import TorchEngine
from .networks import ISRSetting, build_network, load_checkpoint, network_spec
from .networks.depth_units import DepthOutput
from .governor import FrameBudgetGovernor, GovernorState
from .isr_control import ISRControl
from .networks.isr import isr_problem, nearest_fitting
from .pipeline import postprocess, preprocess
from .pipeline.labels import LabelSet, label_set, label_set_for_classes, label_set_from_checkpoint_meta
from .pipeline.preprocess import NetworkInput

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
#: Smallest frame budget accepted: below it no network on any device holds a frame.
MIN_FRAME_BUDGET_MS = 1.0
#: Input-size rungs of a depth network under a frame budget, as fractions of its official size.
DEPTH_SIZE_LADDER = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375)
#: ISR rungs of a segmenter under a frame budget, most accurate first: training, the decoder
#: reduced, the paper's recommended setting, then every training pool x2, x3, x4.
ISR_BUDGET_LADDER = (ISRSetting(), ISRSetting((8, 4, 2, 1), (2, 4, 8)), ISRSetting((16, 8, 2, 1), (2, 4, 8)),
                     ISRSetting.from_ratio(2), ISRSetting.from_ratio(3), ISRSetting.from_ratio(4))



@dataclass
class DepthResult:
    """Depth at the image's size.

    ``depth`` is metres for metric networks (NYU, KITTI); for MiDaS networks it is *relative inverse
    depth* (larger = nearer, unknown scale and shift) unless the estimator was given ``depth_scale`` and
    ``depth_shift``, in which case it is metres from that fit (``kind == "metric_fitted"``).
    """

    depth: np.ndarray
    kind: str  # "metric", "relative_inverse" or "metric_fitted"
    network: str
    network_size: tuple[int, int]
    untrained: bool = False

    @property
    def is_metric(self) -> bool:
        return self.kind in ("metric", "metric_fitted")


@dataclass
class SegmentationResult:
    """Labels at the image's size, and optionally the top class's probability per pixel."""

    labels: np.ndarray
    network: str
    network_size: tuple[int, int]
    isr: ISRSetting
    confidence: np.ndarray | None = None
    untrained: bool = False


#: Seed of untrained weights: the same network gets the same random weights in every process, so
#: its outputs and its engine-cache entries are the same from run to run.
UNTRAINED_SEED = 0


@dataclass
class _Loaded:
    net: torch.nn.Module
    meta: dict[str, Any] = field(default_factory=dict)
    untrained: bool = True
    source: str = f"untrained (seed {UNTRAINED_SEED})"


def build_untrained(name: str) -> torch.nn.Module:
    """Network ``name`` with weights drawn from :data:`UNTRAINED_SEED` (the caller's random state is
    left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(UNTRAINED_SEED)
        return build_network(name)


def _load_network(name: str, checkpoint: str | os.PathLike | None) -> _Loaded:
    net = build_untrained(name)
    if checkpoint is None:
        log.warning("%s: no checkpoint given — running with UNTRAINED random weights (seed %d); results "
                    "are meaningless (see models/README.md for the official files)", name, UNTRAINED_SEED)
        return _Loaded(net)
    ckpt = load_checkpoint(net, checkpoint)
    return _Loaded(net, dict(ckpt.meta), untrained=False, source=f"checkpoint {Path(checkpoint).name}")


def _as_isr(value: ISRSetting | int | str) -> ISRSetting:
    """An ISR setting from an ISRSetting, an int ratio or its text form."""
    if isinstance(value, ISRSetting):
        return value
    return ISRSetting.parse(value) if isinstance(value, str) else ISRSetting.from_ratio(value)


def choose_backend(requested: str, device: torch.device, precision: str = "fp32") -> tuple[str, str]:
    """The backend to use and why; ``EngineError`` when the backend does not run ``precision``.

    ``auto`` is torch on CUDA and on the CPU for fp32/fp16/bf16. On this project's 2-core CI CPU, ONNX
    Runtime fp32 runs a frame faster once its graph exists -- EDAFormer-T 1.1-1.2x the torch engine at
    512x512, DPT-Hybrid about 1.15x (bench/RESULTS.md) -- but it needs a graph per network input size and
    ISR setting (exported and cached on first use: about 2 s for EDAFormer-T, 12 s for DPT-Hybrid on that
    CPU), so a folder of images of mixed sizes pays an export per size, and ``set_isr`` takes effect only
    once the new graph is built (in the background). torch serves any size at once and switches ISR from
    the next frame, so it is the default; ``backend="onnxruntime"`` is the choice for a camera stream of
    one size where every frame per second counts.
    ``precision="int8"`` (opt-in: it trades accuracy) makes ``auto`` ONNX Runtime, the backend that
    runs it.
    """
    if requested not in BACKENDS:
        raise ValueError(f"unknown backend {requested!r}; choose from {', '.join(BACKENDS)}")
    if requested != "auto":
        check_precision(requested, precision)
    if requested == "tensorrt":
        from .engines.tensorrt_engine import import_tensorrt

        import_tensorrt()  # EngineError saying how to install it
        if device.type != "cuda":
            raise EngineError(f"the tensorrt backend needs a CUDA device, got {device}")
    if requested != "auto":
        return requested, "requested"
    if precision == "int8":
        return "onnxruntime", "int8 runs as a statically quantised ONNX Runtime graph"
    check_precision("torch", precision)
    if device.type == "cuda":
        return "torch", "CUDA device present (TensorRT engines are opt-in with backend='tensorrt')"
    return "torch", ("CPU: torch serves any input size at once and switches ISR from the next frame; "
                     "backend='onnxruntime' runs 1.1-1.2x faster on a stream of one size after a one-off "
                     "graph export per size and ISR setting; precision='int8' 1.5-3x")


def frame_budget_problem(budget_ms: float | None) -> str | None:
    """Why ``budget_ms`` cannot be a frame budget (negative, not finite, absurdly small), or None
    (0 and None mean "off")."""
    if budget_ms is None or budget_ms == 0:
        return None
    if not math.isfinite(budget_ms) or budget_ms < 0:
        return f"frame budget must be a finite number of milliseconds >= 0, got {budget_ms}"
    if budget_ms < MIN_FRAME_BUDGET_MS:
        return (f"frame budget {budget_ms} ms is below anything a network can hold (at least "
                f"{MIN_FRAME_BUDGET_MS} ms; 0 turns the budget off)")
    return None


class _Predictor:
    """Shared machinery of DepthEstimator and Segmenter."""

    #: relative cost of a frame-budget rung (None: the governor measures the ratios itself)
    _setting_cost: Callable[[Any], float] | None = None

    def __init__(self, network: str, task: str, checkpoint: str | os.PathLike | None, backend: str,
                 precision: str, device: str | torch.device | None, input_size: tuple[int, int] | None,
                 engine_dir: str | os.PathLike | None,
                 calibration: Sequence[str | os.PathLike] | None = None,
                 frame_budget_ms: float = 0.0) -> None:
        spec = network_spec(network)
        if spec.task != task:
            raise ValueError(f"{network} is a {spec.task} network, not {task}")
        self.spec = spec
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.precision = precision
        self.input_size = None if input_size is None else tuple(int(v) for v in input_size)
        self.backend, reason = choose_backend(backend, self.device, precision)
        self.calibration = tuple(calibration) if calibration else None
        log.info("%s: backend %s on %s (%s)", network, self.backend, self.device, reason)
        self._loaded = _load_network(network, checkpoint)
        self._weights_identity: str | None = None
        #: where fixed-shape backends cache their graphs and engines
        self.engine_dir = Path(engine_dir) if engine_dir else default_engine_dir()
        self._engines: dict[tuple[int, int], Engine] = {}
        #: engines kept (one size per camera stream, and its budget rungs when a budget is set)
        self._max_engines = 2
        self._lock = threading.Lock()
        if self.backend == "torch":
            self._torch_engine: TorchEngine | None = TorchEngine(self._loaded.net, self.device, precision)
        else:
            self._torch_engine = None
        #: holds ``frame_budget_ms`` by choosing the setting (None while the budget is off)
        self.governor: FrameBudgetGovernor | None = None
        self._ladder_size: tuple[int, int] | None = None
        self.set_frame_budget(frame_budget_ms)

    @property
    def untrained(self) -> bool:
        return self._loaded.untrained

    @property
    def weights_identity(self) -> str:
        """Where the weights came from and their digest (the one engine caches are keyed by):
        ``checkpoint X.pt, weights sha256 0123…`` or ``untrained (seed 0), weights sha256 …``."""
        if self._weights_identity is None:
            from .engines.export import weights_digest

            self._weights_identity = f"{self._loaded.source}, weights sha256 {weights_digest(self._loaded.net)}"
        return self._weights_identity

    @property
    def network(self) -> str:
        return self.spec.name

    def engine_for(self, network_size: tuple[int, int], isr: ISRSetting | None = None) -> Engine:
        """The engine serving a network input size (fixed-shape backends keep one per size; a new one
        serves ``isr``, None = the network's current setting, from the start)."""
        if self._torch_engine is not None:
            return self._torch_engine
        with self._lock:
            if network_size not in self._engines:
                self._engines[network_size] = self._make_fixed_engine(network_size, isr)
                while len(self._engines) > self._max_engines:  # bound memory
                    self._engines.pop(next(iter(self._engines)))
            return self._engines[network_size]

    def _make_fixed_engine(self, network_size: tuple[int, int], isr: ISRSetting | None = None,
                           prebuild: Sequence[ISRSetting] = ()) -> Engine:
        """A :class:`~.engines.switching.SwitchingEngine` of the fixed-shape backend for one input size,
        serving ``isr`` (None = the network's) from the start, with ``prebuild`` built in the background.
        Its graphs and engines are cached in ``engine_dir``."""
        from .engines.switching import switching_engine_for_network

        options = {"calibration": self.calibration} if self.backend == "onnxruntime" else {}
        return switching_engine_for_network(self.backend, self._loaded.net, network_size[0], network_size[1],
                                            self.engine_dir, precision=self.precision, device=self.device,
                                            initial=isr, prebuild=prebuild, **options)

    def describe(self) -> dict[str, Any]:
        engine = self._torch_engine or next(iter(self._engines.values()), None)
        info = {"network": self.network, "backend": self.backend, "device": str(self.device),
                "precision": self.precision, "untrained": self.untrained}
        if engine is not None:
            info.update(engine.describe())
        return info

    def preprocess(self, image_rgb: np.ndarray, input_size: tuple[int, int] | None = None) -> NetworkInput:
        """The network family's official input for its dataset (or ``input_size``, else the forced
        ``self.input_size``)."""
        return preprocess.preprocess_for(self.spec.family, self.spec.dataset, image_rgb,
                                         input_size or self.input_size)

    # -- frame budget -----------------------------------------------------------------------------------

    def set_frame_budget(self, budget_ms: float | None) -> None:
        """Hold ``budget_ms`` milliseconds a frame (0 or None = off) by choosing, from the next frame
        on, the most accurate setting whose measured frame time holds it (:mod:`.governor`; the
        Segmenter chooses the ISR setting, the DepthEstimator the input size). ``ValueError`` for a
        negative, non-finite or absurd (below :data:`MIN_FRAME_BUDGET_MS`) budget."""
        if problem := frame_budget_problem(budget_ms):
            raise ValueError(problem)
        if not budget_ms:
            self.governor = None
            return
        if self.governor is None:
            self.governor = FrameBudgetGovernor([self._ungoverned()], cost=self._setting_cost,
                                                budget_s=budget_ms / 1e3)
            self._ladder_size = None  # the ladder is made for the next frame's size
        else:
            self.governor.set_budget(budget_ms / 1e3)

    @property
    def budget_state(self) -> GovernorState | None:
        """What the governor serves and measures (None while the budget is off)."""
        return None if self.governor is None else self.governor.state()

    def _governed(self, network_size: tuple[int, int]) -> Any:
        """The governor's choice for a frame whose official network input is ``network_size``."""
        assert self.governor is not None
        if network_size != self._ladder_size:
            self.governor.set_ladder(self._ladder(network_size))
            self._ladder_size = network_size
        return self.governor.choose()

    def _frame_done(self, served: Any, started: float) -> None:
        if self.governor is not None:
            self.governor.record(served, time.perf_counter() - started)

    def _ladder(self, network_size: tuple[int, int]) -> list[Any]:
        raise NotImplementedError

    def _ungoverned(self) -> Any:
        raise NotImplementedError

    def _run(self, prepared: NetworkInput) -> torch.Tensor:
        return self.engine_for(prepared.network_size).infer(prepared.tensor)


class DepthEstimator(_Predictor):
    """Monocular depth with a DPT network.

    Args:
        network: ``dpt_hybrid_nyu`` (default: metres, indoor), ``dpt_hybrid_kitti`` (metres, driving),
            ``dpt_hybrid_midas``, ``dpt_large_midas`` (relative inverse depth, any scene).
        checkpoint: official checkpoint file (or a converted Hugging Face one); None = untrained weights.
        backend: ``auto``, ``torch``, ``onnxruntime`` or ``tensorrt`` (CUDA; engines cached on disk).
        precision: ``fp32`` (CPU and GPU), ``fp16``/``bf16`` (CUDA), ``int8`` (ONNX Runtime on the CPU:
            about 3× faster DPT-Hybrid on a 2-core AVX2 CPU, at a measured accuracy cost -- see
            ``engines.quantize``).
        calibration: int8 only: image files or folders calibrating the quantised graph (None = the
            bundled sample photograph); frames from your own camera fit your scenes better.
        engine_dir: where ONNX Runtime graphs and TensorRT engines are cached (None =
            :func:`~dense_perception.engines.cache.default_engine_dir`, a folder of the user's).
        input_size: exact network input (H, W), multiples of 32; None = the official keep-aspect rule.
        depth_scale, depth_shift: for MiDaS networks, a per-scene fit on inverse depth that turns the
            output into metres (``1 / (scale·d + shift)``).
        kitti_crop: apply the official KITTI crop (bottom 352 rows, central 1216 columns) first.
        frame_budget_ms: hold this frame time (0 = off) by serving the largest input size of a ladder
            (:data:`DEPTH_SIZE_LADDER` of the official size, multiples of 32, never above it) whose
            measured frame time holds it (:meth:`set_frame_budget`).
    """

    def __init__(self, network: str = DEFAULT_DEPTH_NETWORK, checkpoint: str | os.PathLike | None = None,
                 backend: str = "auto", precision: str = "fp32", device: str | torch.device | None = None,
                 input_size: tuple[int, int] | None = None, depth_scale: float | None = None,
                 depth_shift: float | None = None, kitti_crop: bool = False,
                 engine_dir: str | os.PathLike | None = None,
                 calibration: Sequence[str | os.PathLike] | None = None,
                 frame_budget_ms: float = 0.0) -> None:
        super().__init__(network, "depth", checkpoint, backend, precision, device, input_size, engine_dir,
                         calibration, frame_budget_ms)
        if (depth_scale is None) != (depth_shift is None):
            raise ValueError("give both depth_scale and depth_shift, or neither")
        network_output: DepthOutput = self._loaded.net.output_units
        if depth_scale is not None and network_output.is_metric:
            raise ValueError(f"{network} already outputs metres; depth_scale/depth_shift are for MiDaS networks")
        #: what :meth:`predict` returns: the network's own output, or metres from the per-scene fit
        self.output: DepthOutput = (network_output if depth_scale is None
                                    else network_output.fitted(depth_scale, depth_shift))
        self.depth_scale, self.depth_shift = depth_scale, depth_shift
        self.kitti_crop = kitti_crop

    def preprocess(self, image_rgb: np.ndarray, input_size: tuple[int, int] | None = None) -> NetworkInput:
        """The official DPT input for this network's dataset (or ``input_size``/the forced size)."""
        if self.kitti_crop:
            image_rgb = preprocess.kitti_crop(preprocess.as_rgb_uint8(image_rgb))
        return super().preprocess(image_rgb, input_size)

    def network_size_for(self, height: int, width: int) -> tuple[int, int]:
        """The network input size of an image of ``height`` x ``width`` (without a frame budget)."""
        if self.input_size is not None:
            return self.input_size  # type: ignore[return-value]
        if self.kitti_crop:
            height, width = 352, 1216
        return preprocess.dpt_network_size(height, width, preprocess.DPT_TARGETS[self.spec.dataset])

    def predict(self, image_rgb: np.ndarray) -> DepthResult:
        """Depth for one RGB uint8 image, at its size (the KITTI crop's size with ``kitti_crop``)."""
        started = time.perf_counter()
        size = None
        if self.governor is not None:
            size = self._governed(self.network_size_for(*np.shape(image_rgb)[:2]))
        prepared = self.preprocess(image_rgb, size)
        raw = self._run(prepared)
        depth = postprocess.depth_to_image(raw, prepared.image_size, self.output)
        kind = "metric_fitted" if self.output.fit else self.output.kind
        self._frame_done(prepared.network_size, started)
        return DepthResult(depth, kind, self.network, prepared.network_size, self.untrained)

    # -- frame budget: input sizes ------------------------------------------------------------------

    def _ungoverned(self) -> tuple[int, int]:
        return self.input_size or (0, 0)

    def _ladder(self, network_size: tuple[int, int]) -> list[tuple[int, int]]:
        """Input sizes from ``network_size`` down (multiples of 32, aspect kept); with a fixed-shape
        backend only those whose engines are built, the others being built in the background."""
        height, width = network_size
        ladder: list[tuple[int, int]] = []
        for fraction in DEPTH_SIZE_LADDER:
            size = (max(32, int(round(height * fraction / 32)) * 32), max(32, int(round(width * fraction / 32)) * 32))
            if size not in ladder:
                ladder.append(size)
        if self._torch_engine is not None:
            return ladder
        with self._lock:
            self._max_engines = max(self._max_engines, len(ladder) + 1)
            built = [size for size in ladder if size in self._engines]
        missing = [size for size in ladder if size not in built]
        if missing:
            threading.Thread(target=self._prebuild_sizes, args=(missing,), name="depth-size-prebuild",
                             daemon=True).start()
        return built or ladder[:1]

    def _prebuild_sizes(self, sizes: list[tuple[int, int]]) -> None:
        for size in sizes:
            try:
                self.engine_for(size)
            except Exception as error:  # noqa: BLE001 - a size that cannot be built is not a candidate
                log.warning("%s: no engine for %dx%d (%s); the frame budget does without it",
                            self.network, *size, error)
        self._ladder_size = None  # the next frame takes the built sizes as candidates

    def _setting_cost(self, size: tuple[int, int]) -> float:
        return float(size[0] * size[1])


class Segmenter(_Predictor):
    """Semantic segmentation with an EDAFormer network and live ISR.

    Args:
        network: ``edaformer_{t,b}_{ade20k,cityscapes,cocostuff}``.
        checkpoint: official mmseg checkpoint; None = untrained weights.
        input_size: exact network input (H, W); None = the dataset's official test-time resize.
        label_mode: ``official`` (bilinear logits to the image, then argmax) or ``fast`` (argmax at
            network resolution, nearest-neighbour labels).
        sliding_window: Cityscapes' official evaluation mode (1024×1024 crops, stride 768); slow.
        isr: initial ISR setting (an :class:`ISRSetting`, or an int ratio).
        frame_budget_ms: hold this frame time (0 = off) by serving the least reduction of
            :data:`ISR_BUDGET_LADDER` whose measured frame time holds it (:meth:`set_frame_budget`);
            the governor then chooses the ISR setting.
        isr_prebuild: settings (ISRSetting, int ratio or text like ``"[16,8,2,1]-[2,4,8]"``) whose engines the
            fixed-shape backends build in the background as soon as an input size is known, so that
            switching to them later is immediate (ignored by the torch backend, which switches instantly).
        backend, precision, calibration, device, engine_dir: as for :class:`DepthEstimator`.
    """

    def __init__(self, network: str = DEFAULT_SEG_NETWORK, checkpoint: str | os.PathLike | None = None,
                 backend: str = "auto", precision: str = "fp32", device: str | torch.device | None = None,
                 input_size: tuple[int, int] | None = None, label_mode: str = "official",
                 sliding_window: bool = False, isr: ISRSetting | int = 1,
                 engine_dir: str | os.PathLike | None = None,
                 isr_prebuild: Sequence[ISRSetting | int | str] = (),
                 calibration: Sequence[str | os.PathLike] | None = None,
                 frame_budget_ms: float = 0.0) -> None:
        super().__init__(network, "segmentation", checkpoint, backend, precision, device, input_size,
                         engine_dir, calibration, frame_budget_ms)
        self.isr_prebuild: tuple[ISRSetting, ...] = tuple(_as_isr(s) for s in isr_prebuild)
        self.label_mode = postprocess.LabelMode(label_mode)
        self.sliding_window = sliding_window
        num_classes = self._loaded.net.num_classes
        try:
            fallback = label_set(self.spec.dataset)
        except ValueError:
            fallback = label_set_for_classes(num_classes)
        self.labels: LabelSet = label_set_from_checkpoint_meta(self._loaded.meta, fallback)
        initial = _as_isr(isr)
        self._loaded.net.set_isr(initial)  # validates the values
        #: the one owner of the ISR state (asked, served, building, fallback, failure)
        self.isr_control = ISRControl(initial, isr_problem, nearest_fitting, network_size=self.input_size)
        if self._torch_engine is not None:
            self._torch_engine.set_isr(initial)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.labels.names

    @property
    def palette(self) -> np.ndarray:
        return self.labels.palette

    @property
    def isr(self) -> ISRSetting:
        """The ISR setting serving now (see :attr:`isr_control` for what is asked and being built)."""
        return self.isr_control.state.served

    def check_isr(self, setting: ISRSetting, height: int, width: int) -> None:
        """``ValueError`` naming the level, map size and ratio if ``setting`` cannot run for an *image*
        of ``height``×``width`` (checked at the network input size this image gets)."""
        net_h, net_w = self.network_size_for(height, width)
        problem = isr_problem(setting, net_h, net_w)
        if problem:
            raise ValueError(problem)

    def network_size_for(self, height: int, width: int) -> tuple[int, int]:
        if self.input_size is not None:
            return self.input_size  # type: ignore[return-value]
        if self.sliding_window:
            return (min(1024, height), min(1024, width))
        return preprocess.edaformer_network_size(height, width, self.spec.dataset)

    def set_isr(self, ratio: int | ISRSetting = 1, encoder: Sequence[int] | None = None,
                decoder: Sequence[int] | None = None) -> ISRSetting:
        """Ask for an ISR setting. Invalid values, and pools larger than a feature map at the network
        input size known so far (the fixed ``input_size``, else the last frame's), raise ``ValueError``
        and change nothing. Never blocks.

        torch backend: serves from the next frame on (switched between two frames, never during one).
        Fixed-shape backends (onnxruntime, tensorrt), which bake the setting into a graph or engine: its
        engine is loaded or built in the background while the current one keeps serving, and swapped in
        between two frames; a failed build keeps the old setting. A frame of a size the setting does
        not fit is served with the nearest setting that does. :attr:`isr` is what serves;
        :attr:`isr_control` has the whole state (asked, served, building, fallback, failure).
        """
        setting = ratio if isinstance(ratio, ISRSetting) else ISRSetting.make(ratio, encoder, decoder)
        self.isr_control.request(setting)
        if self._torch_engine is None:  # start the builds now, for the sizes in use
            with self._lock:
                sizes = list(self._engines)
            for size in sizes:
                self._serve(self.isr_control.target(size), size)
        return setting

    def _serve(self, target: ISRSetting, network_size: tuple[int, int] | None) -> None:
        """Make ``target`` serve at ``network_size``: at once (torch), or by a background build."""
        state = self.isr_control.state
        if self._torch_engine is not None:
            if target != state.served:
                self._loaded.net.set_isr(target)
                self._torch_engine.set_isr(target)
                self.isr_control.serving(target, self.backend)
            return
        assert network_size is not None
        engine = self.engine_for(network_size, target)
        if engine.isr == target:
            self.isr_control.serving(target, self.backend)
            return
        if state.pending == target:
            return  # being built; the done-callback reports
        future = engine.request_isr(target)  # type: ignore[attr-defined]
        if not future.done():
            self.isr_control.building(target)
        future.add_done_callback(lambda done, wanted=target: self._built(wanted, done))

    def _built(self, setting: ISRSetting, future: Future) -> None:
        """Done-callback of a background switch (worker thread, or the caller's for immediate swaps)."""
        if future.cancelled():
            return  # superseded by a newer request
        error = future.exception()
        if error is None:
            self.isr_control.serving(setting, self.backend)
        else:
            self.isr_control.failed(setting, str(error).strip() or type(error).__name__)

    def _make_fixed_engine(self, network_size: tuple[int, int], isr: ISRSetting | None = None,
                           prebuild: Sequence[ISRSetting] = ()) -> Engine:
        fitting = [s for s in self.isr_prebuild if isr_problem(s, *network_size) is None]
        for skipped in sorted(set(self.isr_prebuild) - set(fitting), key=str):
            log.warning("isr_prebuild: %s does not fit %dx%d; not built", skipped, *network_size)
        return super()._make_fixed_engine(network_size, isr if isr is not None else self.isr,
                                          list(prebuild) or fitting)

    def _prepare_isr(self, network_size: tuple[int, int]) -> None:
        """Before a frame: serve the requested setting (the frame budget's choice while a budget is
        set), or the nearest one that fits this size."""
        if self.governor is not None:
            choice = self._governed(network_size)
            if choice != self.isr_control.state.requested:
                self.isr_control.request(choice, by="governor")
        self._serve(self.isr_control.target(network_size), network_size)

    # -- frame budget: ISR settings -----------------------------------------------------------------

    def _ungoverned(self) -> ISRSetting:
        return ISRSetting()

    def _ladder(self, network_size: tuple[int, int]) -> list[ISRSetting]:
        """The budget's rungs at this input size: :data:`ISR_BUDGET_LADDER`'s settings that fit it.
        Fixed-shape backends build each rung's engine in the background when it is first chosen (the
        served setting keeps serving meanwhile)."""
        fitting = [s for s in ISR_BUDGET_LADDER if isr_problem(s, *network_size) is None]
        return fitting or [nearest_fitting(ISRSetting(), *network_size)]

    def logits(self, image_rgb: np.ndarray) -> tuple[torch.Tensor, NetworkInput]:
        """Raw logits ``[1, K, h, w]`` (stride 8) and the pre-processed input they came from."""
        prepared = self.preprocess(image_rgb)
        self._prepare_isr(prepared.network_size)
        return self._run(prepared), prepared

    def predict(self, image_rgb: np.ndarray, with_confidence: bool = False) -> SegmentationResult:
        """Labels for one RGB uint8 image at its size."""
        if self.sliding_window:
            return self._predict_sliding(image_rgb, with_confidence)
        started = time.perf_counter()
        logits, prepared = self.logits(image_rgb)
        labels, confidence = postprocess.labels_from_logits(
            logits, prepared.network_size, prepared.image_size, self.label_mode, with_confidence)
        self._frame_done(self.isr, started)
        return SegmentationResult(labels, self.network, prepared.network_size, self.isr, confidence,
                                  self.untrained)

    def _predict_sliding(self, image_rgb: np.ndarray, with_confidence: bool) -> SegmentationResult:
        """mmseg ``slide_inference``: 1024×1024 crops at stride 768, logits averaged on a canvas."""
        prepared = self.preprocess(image_rgb)
        batch = prepared.tensor
        height, width = prepared.network_size
        crop, stride = 1024, 768
        canvas = None
        count = torch.zeros(1, 1, height, width)
        rows = max(height - crop + stride - 1, 0) // stride + 1
        cols = max(width - crop + stride - 1, 0) // stride + 1
        for r in range(rows):
            for c in range(cols):
                y2, x2 = min(r * stride + crop, height), min(c * stride + crop, width)
                y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
                tile = batch[:, :, y1:y2, x1:x2]
                self._prepare_isr((y2 - y1, x2 - x1))
                out = self.engine_for((y2 - y1, x2 - x1)).infer(tile).float().cpu()
                out = torch.nn.functional.interpolate(out, size=(y2 - y1, x2 - x1), mode="bilinear",
                                                      align_corners=False)
                if canvas is None:
                    canvas = torch.zeros(1, out.shape[1], height, width)
                canvas[:, :, y1:y2, x1:x2] += out
                count[:, :, y1:y2, x1:x2] += 1
        logits = canvas / count
        labels, confidence = postprocess.labels_from_logits(
            logits, prepared.network_size, prepared.image_size, postprocess.LabelMode.OFFICIAL,
            with_confidence)
        return SegmentationResult(labels, self.network, prepared.network_size, self.isr, confidence,
                                  self.untrained)
