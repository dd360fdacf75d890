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
import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from .engines.base import Engine, EngineError, check_precision
from .engines.switching import ISRStatus
from .engines.torch_engine import TorchEngine
from .networks import ISRSetting, build_network, load_checkpoint, network_spec
from .networks.depth_units import DepthOutput
from .networks.isr import isr_problem
from .pipeline import postprocess, preprocess
from .pipeline.labels import LabelSet, label_set, label_set_for_classes, label_set_from_checkpoint_meta
from .pipeline.preprocess import NetworkInput

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
#: Default folder of ONNX graphs and engines built on demand.
DEFAULT_ENGINE_DIR = os.path.join("models", "engines")


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


@dataclass
class _Loaded:
    net: torch.nn.Module
    meta: dict[str, Any] = field(default_factory=dict)
    untrained: bool = True


def _load_network(name: str, checkpoint: str | os.PathLike | None) -> _Loaded:
    net = build_network(name)
    if checkpoint is None:
        log.warning("%s: no checkpoint given — running with UNTRAINED random weights; results are "
                    "meaningless (see models/README.md for the official files)", name)
        return _Loaded(net)
    ckpt = load_checkpoint(net, checkpoint)
    return _Loaded(net, dict(ckpt.meta), untrained=False)


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


class _Predictor:
    """Shared machinery of DepthEstimator and Segmenter."""

    def __init__(self, network: str, task: str, checkpoint: str | os.PathLike | None, backend: str,
                 precision: str, device: str | torch.device | None, input_size: tuple[int, int] | None,
                 engine_dir: str | os.PathLike | None,
                 calibration: Sequence[str | os.PathLike] | None = None) -> None:
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
        self.engine_dir = os.fspath(engine_dir or DEFAULT_ENGINE_DIR)
        self._engines: dict[tuple[int, int], Engine] = {}
        self._lock = threading.Lock()
        if self.backend == "torch":
            self._torch_engine: TorchEngine | None = TorchEngine(self._loaded.net, self.device, precision)
        else:
            self._torch_engine = None

    @property
    def untrained(self) -> bool:
        return self._loaded.untrained

    @property
    def network(self) -> str:
        return self.spec.name

    def engine_for(self, network_size: tuple[int, int]) -> Engine:
        """The engine serving a network input size (fixed-shape backends keep one per size)."""
        if self._torch_engine is not None:
            return self._torch_engine
        with self._lock:
            if network_size not in self._engines:
                self._engines[network_size] = self._make_fixed_engine(network_size)
                while len(self._engines) > 2:  # a camera stream uses one size; bound memory
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

    def preprocess(self, image_rgb: np.ndarray) -> NetworkInput:
        """The network family's official input for its dataset (or the forced ``input_size``)."""
        return preprocess.preprocess_with(self.spec.preprocessing, image_rgb, self.input_size)

    def _run(self, prepared: NetworkInput) -> torch.Tensor:
        return self.engine_for(prepared.network_size).infer(prepared.tensor)


class DepthEstimator(_Predictor):
    """Monocular depth with a DPT network.

    Args:
        network: ``dpt_hybrid_midas`` (default), ``dpt_large_midas``, ``dpt_hybrid_nyu``, ``dpt_hybrid_kitti``.
        checkpoint: official checkpoint file (or a converted Hugging Face one); None = untrained weights.
        backend: ``auto``, ``torch``, ``onnxruntime`` or ``tensorrt`` (CUDA; engines cached on disk).
        precision: ``fp32`` (CPU and GPU), ``fp16``/``bf16`` (CUDA), ``int8`` (ONNX Runtime on the CPU:
            about 3× faster DPT-Hybrid on a 2-core AVX2 CPU, at a measured accuracy cost -- see
            ``engines.quantize``).
        calibration: int8 only: image files or folders calibrating the quantised graph (None = the
            bundled sample photograph); frames from your own camera fit your scenes better.
        input_size: exact network input (H, W), multiples of 32; None = the official keep-aspect rule.
        depth_scale, depth_shift: for MiDaS networks, a per-scene fit on inverse depth that turns the
            output into metres (``1 / (scale·d + shift)``).
        kitti_crop: apply the official KITTI crop (bottom 352 rows, central 1216 columns) first.
    """

    def __init__(self, network: str = "dpt_hybrid_midas", checkpoint: str | os.PathLike | None = None,
                 backend: str = "auto", precision: str = "fp32", device: str | torch.device | None = None,
                 input_size: tuple[int, int] | None = None, depth_scale: float | None = None,
                 depth_shift: float | None = None, kitti_crop: bool = False,
                 engine_dir: str | os.PathLike | None = None,
                 calibration: Sequence[str | os.PathLike] | None = None) -> None:
        super().__init__(network, "depth", checkpoint, backend, precision, device, input_size, engine_dir,
                         calibration)
        self.output: DepthOutput = self._loaded.net.output_units
        if (depth_scale is None) != (depth_shift is None):
            raise ValueError("give both depth_scale and depth_shift, or neither")
        if depth_scale is not None and self.output.is_metric:
            raise ValueError(f"{network} already outputs metres; depth_scale/depth_shift are for MiDaS networks")
        self.depth_scale, self.depth_shift = depth_scale, depth_shift
        self.kitti_crop = kitti_crop

    def preprocess(self, image_rgb: np.ndarray) -> NetworkInput:
        """The official DPT input for this network's dataset (or the forced ``input_size``)."""
        if self.kitti_crop:
            image_rgb = preprocess.kitti_crop(preprocess.as_rgb_uint8(image_rgb))
        return super().preprocess(image_rgb)

    def predict(self, image_rgb: np.ndarray) -> DepthResult:
        """Depth for one RGB uint8 image, at its size (the KITTI crop's size with ``kitti_crop``)."""
        prepared = self.preprocess(image_rgb)
        raw = self._run(prepared)
        depth = postprocess.depth_to_image(raw, prepared.image_size, self.output)
        kind = self.output.kind
        if self.depth_scale is not None:
            depth = postprocess.relative_to_metres(depth, self.depth_scale, self.depth_shift)
            kind = "metric_fitted"
        return DepthResult(depth, kind, self.network, prepared.network_size, self.untrained)


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
        isr_prebuild: settings (ISRSetting, int ratio or text like ``"[16,8,2,1]-[2,4,8]"``) whose engines the
            fixed-shape backends build in the background as soon as an input size is known, so that
            switching to them later is immediate (ignored by the torch backend, which switches instantly).
        backend, precision, calibration, device, engine_dir: as for :class:`DepthEstimator`.
    """

    def __init__(self, network: str = "edaformer_t_ade20k", checkpoint: str | os.PathLike | None = None,
                 backend: str = "auto", precision: str = "fp32", device: str | torch.device | None = None,
                 input_size: tuple[int, int] | None = None, label_mode: str = "official",
                 sliding_window: bool = False, isr: ISRSetting | int = 1,
                 engine_dir: str | os.PathLike | None = None,
                 isr_prebuild: Sequence[ISRSetting | int | str] = (),
                 calibration: Sequence[str | os.PathLike] | None = None) -> None:
        super().__init__(network, "segmentation", checkpoint, backend, precision, device, input_size,
                         engine_dir, calibration)
        self.isr_prebuild: tuple[ISRSetting, ...] = tuple(_as_isr(s) for s in isr_prebuild)
        self._isr_error: str | None = None
        self.label_mode = postprocess.LabelMode(label_mode)
        self.sliding_window = sliding_window
        num_classes = self._loaded.net.num_classes
        try:
            fallback = label_set(self.spec.dataset)
        except ValueError:
            fallback = label_set_for_classes(num_classes)
        self.labels: LabelSet = label_set_from_checkpoint_meta(self._loaded.meta, fallback)
        self._isr = isr if isinstance(isr, ISRSetting) else ISRSetting.from_ratio(isr)
        self._apply_isr()

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.labels.names

    @property
    def palette(self) -> np.ndarray:
        return self.labels.palette

    @property
    def isr(self) -> ISRSetting:
        return self._isr

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
        return preprocess.network_size_with(self.spec.preprocessing, height, width)

    def set_isr(self, ratio: int | ISRSetting = 1, encoder: Sequence[int] | None = None,
                decoder: Sequence[int] | None = None) -> ISRSetting:
        """Switch ISR. Invalid values raise ``ValueError`` and change nothing.

        torch backend: from the next frame on. Fixed-shape backends (onnxruntime, tensorrt), which bake the
        setting into a graph or engine: the setting is checked now against the network sizes in use
        (``ValueError`` when a pool exceeds a feature map), then its engine is loaded or built in the
        background while the current one keeps serving, and swapped in between two frames. This call never
        blocks; :attr:`isr` is the setting serving, :meth:`isr_status` the pending one and the last failure
        (a failed build keeps the old setting).
        """
        setting = ratio if isinstance(ratio, ISRSetting) else ISRSetting.make(ratio, encoder, decoder)
        if self._torch_engine is None:
            self._request_isr(setting)
            return setting
        previous, self._isr = self._isr, setting
        try:
            self._apply_isr()
        except Exception:
            self._isr = previous
            self._apply_isr()
            raise
        return setting

    def isr_status(self) -> ISRStatus:
        """ISR in use, ISR being built (None when none; always None for torch), last build failure."""
        with self._lock:
            engines = list(self._engines.values())
        pending = next((p for p in (getattr(e, "pending", None) for e in engines) if p is not None), None)
        return ISRStatus(self._isr, pending, self._isr_error)

    def _apply_isr(self) -> None:
        """Give ``self._isr`` to the network and the torch engine (fixed-shape engines: :meth:`_request_isr`)."""
        self._loaded.net.set_isr(self._isr)
        if self._torch_engine is not None:
            self._torch_engine.set_isr(self._isr)

    def _request_isr(self, setting: ISRSetting) -> None:
        """Fixed-shape backends: validate ``setting`` for every size in use, then ask each engine for it."""
        with self._lock:
            engines = dict(self._engines)
        sizes = set(engines) | ({self.input_size} if self.input_size is not None else set())
        for height, width in sorted(sizes):
            problem = isr_problem(setting, height, width)
            if problem:
                raise ValueError(problem)
        self._loaded.net.set_isr(setting)  # validates; engines export from private copies of the network
        reported, self._isr_error = self._isr_error, None
        if not engines:
            self._isr = setting  # the first engine is built for it
            return
        for engine in engines.values():
            engine.request_isr(setting).add_done_callback(  # type: ignore[attr-defined]
                lambda future, wanted=setting: self._isr_switched(wanted, future, reported))

    def _isr_switched(self, setting: ISRSetting, future: Future, reported: str | None) -> None:
        """Done-callback of a background switch (worker thread, or the caller's for immediate swaps);
        a failure already ``reported`` (the same setting requested again) is not logged again."""
        if future.cancelled():
            return  # superseded by a newer request
        error = future.exception()
        if error is None:
            self._isr = setting
            return
        self._isr_error = f"ISR {setting}: {str(error).strip() or type(error).__name__}"
        if self._isr_error != reported:
            log.warning("%s: keeping ISR %s; %s", self.network, self._isr, self._isr_error)

    def _make_fixed_engine(self, network_size: tuple[int, int], isr: ISRSetting | None = None,
                           prebuild: Sequence[ISRSetting] = ()) -> Engine:
        fitting = [s for s in self.isr_prebuild if isr_problem(s, *network_size) is None]
        for skipped in sorted(set(self.isr_prebuild) - set(fitting), key=str):
            log.warning("isr_prebuild: %s does not fit %dx%d; not built", skipped, *network_size)
        return super()._make_fixed_engine(network_size, isr if isr is not None else self._isr,
                                          list(prebuild) or fitting)

    def logits(self, image_rgb: np.ndarray) -> tuple[torch.Tensor, NetworkInput]:
        """Raw logits ``[1, K, h, w]`` (stride 8) and the pre-processed input they came from."""
        prepared = self.preprocess(image_rgb)
        return self._run(prepared), prepared

    def predict(self, image_rgb: np.ndarray, with_confidence: bool = False) -> SegmentationResult:
        """Labels for one RGB uint8 image at its size."""
        if self.sliding_window:
            return self._predict_sliding(image_rgb, with_confidence)
        logits, prepared = self.logits(image_rgb)
        labels, confidence = postprocess.labels_from_logits(
            logits, prepared.network_size, prepared.image_size, self.label_mode, with_confidence)
        return SegmentationResult(labels, self.network, prepared.network_size, self._isr, confidence,
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
        return SegmentationResult(labels, self.network, prepared.network_size, self._isr, confidence,
                                  self.untrained)
