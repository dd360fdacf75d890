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
from .networks import ISRScheme, ISRSetting, build_network, load_checkpoint, network_spec
from .networks.depth_units import DepthOutput
from .governor import FrameBudgetGovernor, GovernorState
from .isr_control import ISRControl
from .networks.isr import EDAFORMER_ISR
from .networks.registry import Inference
from .pipeline import postprocess, preprocess
from .pipeline.labels import LabelSet, label_set, label_set_for_classes, label_set_from_checkpoint_meta
from .pipeline.preprocess import NetworkInput
from .pipeline.sliding import slide_logits

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
#: Smallest frame budget accepted: below it no network on any device holds a frame.
MIN_FRAME_BUDGET_MS = 1.0
#: Input-size rungs under a frame budget, as fractions of the official size: a depth network's, and a
#: segmenter's without ISR (HRViT, ViT-CoMer).
SIZE_LADDER = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375)
#: EDAFormer's ISR rungs under a frame budget, most accurate first: training, the decoder reduced, the
#: paper's recommended setting, then every training pool x2, x3, x4. Every ISR network has its own
#: (:meth:`~.networks.isr.ISRScheme.budget_ladder`).
ISR_BUDGET_LADDER = EDAFORMER_ISR.budget_ladder()



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


def as_isr(value: ISRSetting | int | str | None, scheme: ISRScheme = EDAFORMER_ISR) -> ISRSetting | None:
    """A setting of ``scheme`` from an ISRSetting (or None: an adaptive training grid), an int ratio or
    its text form; ``ValueError`` with the reason when the network cannot run it."""
    if value is None or isinstance(value, ISRSetting):
        return scheme.validate(value)
    return scheme.parse(value) if isinstance(value, str) else scheme.make(value)


def _plain_ratio(value: ISRSetting | int | str | None) -> ISRSetting | int | None:
    """An ISR value as a network without ISR takes it: text of a plain ratio as the int."""
    if isinstance(value, str):
        text = value.strip().strip("[]").strip()
        return int(text) if text.isdigit() else ISRSetting.read(value)
    return value


def _pixels(size: tuple[int, int]) -> float:
    """Relative cost of an input size."""
    return float(size[0] * size[1])


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
        return preprocess.preprocess_with(self.spec.preprocessing, image_rgb, input_size or self.input_size)

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

    def _size_ladder(self, network_size: tuple[int, int]) -> list[tuple[int, int]]:
        """Input sizes from ``network_size`` down (:data:`SIZE_LADDER` fractions, multiples of 32, aspect
        kept); with a fixed-shape backend only those whose engines are built, the others being built in
        the background."""
        height, width = network_size
        ladder: list[tuple[int, int]] = []
        for fraction in SIZE_LADDER:
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
            threading.Thread(target=self._prebuild_sizes, args=(missing,), name="size-prebuild",
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
            (:data:`SIZE_LADDER` of the official size, multiples of 32, never above it) whose
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
        return self._size_ladder(network_size)

    def _setting_cost(self, size: tuple[int, int]) -> float:
        return _pixels(size)


class Segmenter(_Predictor):
    """Semantic segmentation with any registered segmenter, live ISR where the network has it.

    Args:
        network: a registered segmentation network (``available_networks("segmentation")``):
            ``edaformer_*``, ``segformer_b{0..5}_*``, ``pvt_v2_*_fpn_ade20k``, ``pvt_*_fpn_ade20k``,
            ``hrvit_*``, ``vit_comer_*``.
        checkpoint: official mmseg checkpoint (SegFormer: also a Hugging Face file); None = untrained
            weights.
        input_size: exact network input (H, W); None = the dataset's official test-time resize.
        label_mode: ``official`` (bilinear logits to the image, then argmax) or ``fast`` (argmax at
            network resolution, nearest-neighbour labels).
        inference: ``whole`` (one forward on the whole input) or ``slide`` (mmseg's sliding windows,
            the network's official crop and stride); None = the network's official test mode
            (``network_spec(name).inference``: sliding for Cityscapes networks and ViT-CoMer, else whole).
            Whole-image is the faster choice for a robot.
        isr: initial ISR setting (an :class:`ISRSetting`, an int ratio or its text); networks without
            ISR accept only 1.
        frame_budget_ms: hold this frame time (0 = off) by serving the most accurate rung of a ladder
            whose measured frame time holds it (:meth:`set_frame_budget`): the network's ISR ladder
            (:meth:`~.networks.isr.ISRScheme.budget_ladder`; EDAFormer's is :data:`ISR_BUDGET_LADDER`),
            or, for networks without ISR, the input-size ladder (:data:`SIZE_LADDER`).
        isr_prebuild: settings (ISRSetting, int ratio or text like ``"[16,8,2,1]-[2,4,8]"``) whose engines the
            fixed-shape backends build in the background as soon as an input size is known, so that
            switching to them later is immediate (ignored by the torch backend, which switches instantly).
        backend, precision, calibration, device, engine_dir: as for :class:`DepthEstimator`.
    """

    def __init__(self, network: str = DEFAULT_SEG_NETWORK, checkpoint: str | os.PathLike | None = None,
                 backend: str = "auto", precision: str = "fp32", device: str | torch.device | None = None,
                 input_size: tuple[int, int] | None = None, label_mode: str = "official",
                 inference: str | None = None, isr: ISRSetting | int | str | None = 1,
                 engine_dir: str | os.PathLike | None = None,
                 isr_prebuild: Sequence[ISRSetting | int | str] = (),
                 calibration: Sequence[str | os.PathLike] | None = None,
                 frame_budget_ms: float = 0.0) -> None:
        super().__init__(network, "segmentation", checkpoint, backend, precision, device, input_size,
                         engine_dir, calibration, frame_budget_ms)
        assert self.spec.inference is not None  # every segmenter registers its test mode
        #: whole-image or sliding-window inference, with the network's windows
        self.inference: Inference = self.spec.inference.with_mode(inference)
        #: the network's ISR scheme (None: its attention has no key/value reduction, e.g. HRViT)
        self.isr_scheme: ISRScheme | None = self.spec.isr
        self.label_mode = postprocess.LabelMode(label_mode)
        num_classes = self._loaded.net.num_classes
        try:
            fallback = label_set(self.spec.dataset)
        except ValueError:
            fallback = label_set_for_classes(num_classes)
        self.labels: LabelSet = label_set_from_checkpoint_meta(self._loaded.meta, fallback)
        self.isr_control: ISRControl | None = None
        self.isr_prebuild: tuple[ISRSetting | None, ...] = ()
        if self.isr_scheme is None:
            self.set_isr(_plain_ratio(isr))  # ValueError unless 1: ISR does not apply
            if isr_prebuild:
                raise ValueError(f"isr_prebuild: ISR does not apply to {network}")
            return
        self.isr_prebuild = tuple(as_isr(s, self.isr_scheme) for s in isr_prebuild)
        initial = as_isr(isr, self.isr_scheme)
        self._loaded.net.set_isr(initial)  # validates the values
        #: the one owner of the ISR state (asked, served, building, fallback, failure)
        self.isr_control = ISRControl(initial, self.isr_scheme, network_size=self._window_size(self.input_size))
        if self._torch_engine is not None:
            self._torch_engine.set_isr(initial)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.labels.names

    @property
    def palette(self) -> np.ndarray:
        return self.labels.palette

    @property
    def has_isr(self) -> bool:
        """Whether the network has inference spatial reduction (False: HRViT, ViT-CoMer)."""
        return self.isr_control is not None

    @property
    def isr(self) -> ISRSetting | None:
        """The ISR setting serving now (see :attr:`isr_control` for what is asked and being built); None
        for networks without ISR, and for PVTv2-li's adaptive training grid."""
        return None if self.isr_control is None else self.isr_control.state.served

    def isr_text(self, setting: ISRSetting | None) -> str:
        """``setting`` written for people (``no ISR`` for networks without it)."""
        return "no ISR" if self.isr_scheme is None else self.isr_scheme.text(setting)

    def check_isr(self, setting: ISRSetting | None, height: int, width: int) -> None:
        """``ValueError`` with the reason if ``setting`` cannot run on this network, or not for an *image*
        of ``height``×``width`` (checked at the network input size -- or window -- this image gets),
        naming the level, map size and ratio and the input size it needs."""
        if self.isr_scheme is None:
            self._loaded.net.check_isr(height, width, setting)
            return
        setting = self.isr_scheme.validate(setting)
        net_h, net_w = self._window_size(self.network_size_for(height, width))  # type: ignore[misc]
        problem = self.isr_scheme.problem(setting, net_h, net_w)
        if problem:
            raise ValueError(problem)

    def network_size_for(self, height: int, width: int) -> tuple[int, int]:
        """The network input size an image of ``height``×``width`` gets (the whole input that sliding
        windows then cover)."""
        if self.input_size is not None:
            return self.input_size  # type: ignore[return-value]
        return preprocess.network_size_with(self.spec.preprocessing, height, width)

    def _window_size(self, network_size: tuple[int, int] | None) -> tuple[int, int] | None:
        """What one forward sees for a network input of ``network_size``: the input itself, or in slide
        mode its first window."""
        if network_size is None or self.inference.mode == "whole":
            return network_size
        return tuple(min(c, n) for c, n in zip(self.inference.crop, network_size))  # type: ignore[return-value]

    def set_isr(self, ratio: int | str | ISRSetting | None = 1, encoder: Sequence[int] | None = None,
                decoder: Sequence[int] | None = None) -> ISRSetting | None:
        """Ask for an ISR setting: a ratio (with ``encoder``/``decoder`` ratios replacing its values where
        given), an :class:`ISRSetting`, or its text (``"2"``, ``"[16,8,2,1]"``). Settings the network cannot run, and pools larger than a feature map
        at the network input size known so far (the fixed ``input_size``, else the last frame's), raise
        ``ValueError`` with the reason and change nothing. Never blocks. Networks without ISR accept
        ratio 1 only ("ISR does not apply to ...").

        torch backend: serves from the next frame on (switched between two frames, never during one).
        Fixed-shape backends (onnxruntime, tensorrt), which bake the setting into a graph or engine: its
        engine is loaded or built in the background while the current one keeps serving, and swapped in
        between two frames; a failed build keeps the old setting. A frame of a size the setting does
        not fit is served with the nearest setting that does. :attr:`isr` is what serves;
        :attr:`isr_control` has the whole state (asked, served, building, fallback, failure).
        """
        if self.isr_scheme is None or self.isr_control is None:
            self._loaded.net.set_isr(_plain_ratio(ratio), encoder, decoder)  # ValueError unless ratio 1
            return None
        if ratio is None or isinstance(ratio, (ISRSetting, str)):
            setting = as_isr(ratio, self.isr_scheme)
        else:
            setting = self.isr_scheme.make(ratio, encoder, decoder)
        self.isr_control.request(setting)
        if self._torch_engine is None:  # start the builds now, for the sizes in use
            with self._lock:
                sizes = list(self._engines)
            for size in sizes:
                self._serve(self.isr_control.target(size), size)
        return setting

    def _serve(self, target: ISRSetting | None, network_size: tuple[int, int] | None) -> None:
        """Make ``target`` serve at ``network_size``: at once (torch), or by a background build."""
        assert self.isr_control is not None
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
        if state.building and state.pending == target:
            return  # being built; the done-callback reports
        future = engine.request_isr(target)  # type: ignore[attr-defined]
        if not future.done():
            self.isr_control.building(target)
        future.add_done_callback(lambda done, wanted=target: self._built(wanted, done))

    def _built(self, setting: ISRSetting | None, future: Future) -> None:
        """Done-callback of a background switch (worker thread, or the caller's for immediate swaps)."""
        if future.cancelled():
            return  # superseded by a newer request
        error = future.exception()
        assert self.isr_control is not None
        if error is None:
            self.isr_control.serving(setting, self.backend)
        else:
            self.isr_control.failed(setting, str(error).strip() or type(error).__name__)

    def _make_fixed_engine(self, network_size: tuple[int, int], isr: ISRSetting | None = None,
                           prebuild: Sequence[ISRSetting] = ()) -> Engine:
        if self.isr_scheme is None:
            return super()._make_fixed_engine(network_size)
        scheme = self.isr_scheme
        fitting = [s for s in self.isr_prebuild if scheme.problem(s, *network_size) is None]
        for skipped in sorted({scheme.text(s) for s in self.isr_prebuild if s not in fitting}):
            log.warning("isr_prebuild: %s does not fit %dx%d; not built", skipped, *network_size)
        return super()._make_fixed_engine(network_size, isr if isr is not None else self.isr,
                                          list(prebuild) or fitting)

    def _prepare_isr(self, window_size: tuple[int, int]) -> None:
        """Before a forward on a ``window_size`` input: serve the requested setting, or the nearest one
        that fits this size."""
        if self.isr_control is not None:
            self._serve(self.isr_control.target(window_size), window_size)

    # -- frame budget: ISR settings, or input sizes without ISR ---------------------------------------

    def _ungoverned(self) -> ISRSetting | None | tuple[int, int]:
        if self.spec.isr is None:
            return self.input_size or (0, 0)
        return self.spec.isr.training

    def _ladder(self, network_size: tuple[int, int]) -> list[Any]:
        """The budget's rungs for a network input of ``network_size``: the ISR scheme's ladder settings
        that fit it (its window, sliding), else the input-size ladder. Fixed-shape backends build each
        rung's engine in the background when it is first chosen (the served setting keeps serving)."""
        if self.isr_scheme is None:
            return self._size_ladder(network_size)
        window = self._window_size(network_size)
        assert window is not None
        fitting = [s for s in self.isr_scheme.budget_ladder() if self.isr_scheme.problem(s, *window) is None]
        return fitting or [self.isr_scheme.nearest_fitting(self.isr_scheme.training, *window)]

    @property
    def _setting_cost(self) -> Callable[[tuple[int, int]], float] | None:  # type: ignore[override]
        """Relative cost of the budget's rungs: pixels for input sizes; ISR rungs are measured."""
        return _pixels if self.spec.isr is None else None

    def _budget_choice(self, network_size: tuple[int, int]) -> tuple[int, int] | None:
        """Apply the frame budget's choice for a frame whose official input is ``network_size``: an ISR
        request, or the input size to run (returned; None = the official one)."""
        if self.governor is None:
            return None
        choice = self._governed(network_size)
        if self.isr_control is None:
            return choice
        if choice != self.isr_control.state.requested:
            self.isr_control.request(choice, by="governor")
        return None

    def _budget_served(self, prepared: NetworkInput) -> Any:
        return prepared.network_size if self.isr_control is None else self.isr

    # -- inference --------------------------------------------------------------------------------------

    def _forward(self, tensor: torch.Tensor) -> torch.Tensor:
        """Raw logits of one forward, serving the ISR setting that fits this input."""
        size = (int(tensor.shape[2]), int(tensor.shape[3]))
        self._prepare_isr(size)
        return self.engine_for(size).infer(tensor)

    def logits(self, image_rgb: np.ndarray) -> tuple[torch.Tensor, NetworkInput]:
        """Raw logits and the pre-processed input they came from: whole-image, ``[1, K, h, w]`` at the
        network's output stride; sliding, ``[1, K, H, W]`` at the network input size."""
        official = self.network_size_for(*np.shape(image_rgb)[:2])
        size = self._budget_choice(official)
        prepared = self.preprocess(image_rgb, size)
        if self.inference.mode == "slide":
            return slide_logits(prepared.tensor, self.inference.crop, self.inference.stride, self._forward), prepared
        return self._forward(prepared.tensor), prepared

    def predict(self, image_rgb: np.ndarray, with_confidence: bool = False) -> SegmentationResult:
        """Labels for one RGB uint8 image at its size."""
        started = time.perf_counter()
        logits, prepared = self.logits(image_rgb)
        labels, confidence = postprocess.labels_from_logits(
            logits, prepared.network_size, prepared.image_size, self.label_mode, with_confidence)
        self._frame_done(self._budget_served(prepared), started)
        return SegmentationResult(labels, self.network, prepared.network_size, self.isr, confidence,
                                  self.untrained)
