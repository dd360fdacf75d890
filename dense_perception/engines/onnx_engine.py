"""The ONNX Runtime engine: one exported fixed-shape graph (see :mod:`.export`) in an inference session.

Execution providers, by preference: TensorRT, CUDA, CPU -- whichever this onnxruntime build has, unless
the caller names them. Inputs and outputs cross as NumPy arrays that share memory with CPU torch tensors.

On an x86 CPU the session gets the graph with its odd depthwise widths padded for MLAS's blocked layout
(:mod:`.nchwc_padding`, in memory; the file stays as exported).

ISR is baked into a graph. An engine made from a file serves that file's setting only; an engine made by
:func:`onnx_engine_for_network` carries an exporter and switches ISR by exporting (or reusing) the graph
for the new setting in its cache folder and swapping sessions. Inference keeps using the old session
until the new one is ready; the swap is one attribute assignment.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import onnx
import torch
from torch import nn

from ..networks.isr import ISRSetting
from .base import EngineError
from .export import INPUT_NAME, MIN_OPSET, GraphCache, GraphInfo, network_isr, read_graph_info
from .nchwc_padding import nchwc_layout_used, pad_depthwise_widths

log = logging.getLogger(__name__)

#: Execution providers in order of preference.
PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

#: Makes the graph for an ISR setting and returns its path.
Exporter = Callable[[ISRSetting], Path]


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise EngineError("the onnxruntime backend needs onnxruntime: pip install onnxruntime "
                          "(or onnxruntime-gpu for the CUDA and TensorRT providers)") from None
    return onnxruntime


def select_providers(requested: Sequence[str] | None = None) -> list[str]:
    """``requested`` checked against this onnxruntime, or the available ones of :data:`PROVIDER_PREFERENCE`."""
    available = _ort().get_available_providers()
    if requested is None:
        return [p for p in PROVIDER_PREFERENCE if p in available]
    missing = [p for p in requested if p not in available]
    if missing or not requested:
        raise EngineError(f"execution providers {missing or list(requested)} are not available; "
                          f"this onnxruntime has {', '.join(available)}")
    return list(requested)


@dataclass(frozen=True)
class _Graph:
    """One loaded file: where it is, what it was made for, and its session."""

    path: Path
    info: GraphInfo
    session: Any  # onnxruntime.InferenceSession
    widened_convs: int  # depthwise convolutions padded for the CPU's blocked layout (0: the file as it is)


class OnnxRuntimeEngine:
    """An exported graph in ONNX Runtime, behind the :class:`~.base.Engine` protocol.

    Args:
        path: an ``.onnx`` file written by :func:`~.export.export_onnx`.
        providers: execution provider names; None = TensorRT, CUDA, CPU, those available.
        threads: intra-op threads; None = ``torch.get_num_threads()``.
        exporter: makes the graph for another ISR setting (see :func:`onnx_engine_for_network`).
        expect: metadata fields the file must have (``network``, ``height``, ``isr``, ...), else EngineError.
    """

    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] | None = None,
                 threads: int | None = None, exporter: Exporter | None = None,
                 expect: Mapping[str, Any] | None = None) -> None:
        self.providers = select_providers(providers)
        self.threads = int(threads or torch.get_num_threads())
        self._exporter = exporter
        self._graph = self._open(Path(path))
        differences = self._graph.info.differences(**(expect or {}))
        if differences:
            raise EngineError(f"{path} was exported for another setting: {'; '.join(differences)}")

    # ---- loading -----------------------------------------------------------------------------
    def _session_options(self) -> Any:
        ort = _ort()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads
        options.log_severity_level = 3
        return options

    def _provider_options(self, path: Path) -> list[dict[str, Any]]:
        """Per-provider options: TensorRT caches its engines beside the graph, in the graph's precision."""
        options: list[dict[str, Any]] = []
        for provider in self.providers:
            if provider == "TensorrtExecutionProvider":
                options.append({"trt_engine_cache_enable": True, "trt_engine_cache_path": str(path.parent),
                                "trt_fp16_enable": read_graph_info(path).precision == "fp16"})
            else:
                options.append({})
        return options

    def _model_source(self, path: Path) -> tuple[str | bytes, int]:
        """What the session loads: the file, or -- for the CPU provider on x86 -- the graph with its odd
        depthwise widths padded (:mod:`.nchwc_padding`) and how many were padded."""
        if self.providers[0] != "CPUExecutionProvider" or not nchwc_layout_used():
            return str(path), 0
        model = onnx.load(str(path))
        widened = pad_depthwise_widths(model)
        return (model.SerializeToString(), widened) if widened else (str(path), 0)

    def _open(self, path: Path) -> _Graph:
        """A session for ``path``; EngineError naming the file for anything unusable."""
        if not path.is_file():
            raise EngineError(f"{path}: no such ONNX file")
        try:
            source, widened = self._model_source(path)
            session = _ort().InferenceSession(source, self._session_options(), providers=self.providers,
                                              provider_options=self._provider_options(path))
        except EngineError:
            raise
        except Exception as exc:  # onnx's DecodeError, onnxruntime's own Fail/InvalidProtobuf/... types
            reason = str(exc).strip() or type(exc).__name__
            raise EngineError(f"{path}: cannot load it as an ONNX graph ({reason})") from None
        info = GraphInfo.from_props(session.get_modelmeta().custom_metadata_map, str(path))
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if ([i.name for i in inputs] != [INPUT_NAME] or tuple(inputs[0].shape) != info.input_shape
                or [o.name for o in outputs] != [info.output_name]):
            raise EngineError(
                f"{path}: graph does not match its metadata: inputs {[(i.name, i.shape) for i in inputs]}, "
                f"outputs {[o.name for o in outputs]}; expected {INPUT_NAME} {list(info.input_shape)} -> "
                f"{info.output_name}")
        return _Graph(path, info, session, widened)

    # ---- Engine protocol ---------------------------------------------------------------------
    @property
    def network(self) -> str:
        return self._graph.info.network

    @property
    def device(self) -> torch.device:
        """Inputs may live anywhere; they are copied to the CPU (a no-op for CPU tensors)."""
        return torch.device("cpu")

    @property
    def path(self) -> Path:
        return self._graph.path

    @property
    def info(self) -> GraphInfo:
        return self._graph.info

    @property
    def isr(self) -> ISRSetting | None:
        return self._graph.info.isr_setting

    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw output for a float32 batch of exactly the graph's input shape, on the batch's device."""
        graph = self._graph  # one read: a concurrent set_isr swaps the whole graph
        if tuple(batch.shape) != graph.info.input_shape:
            raise EngineError(
                f"batch shape {list(batch.shape)} differs from the fixed input shape "
                f"{list(graph.info.input_shape)} of {graph.path}; export a graph for this size")
        array = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        (out,) = graph.session.run([graph.info.output_name], {INPUT_NAME: array})
        return torch.from_numpy(out).to(batch.device)

    def set_isr(self, setting: ISRSetting) -> None:
        """Keep the graph when it has ``setting``; else switch to the exporter's graph for it, or ValueError."""
        current = self.isr
        if current is None:
            raise ValueError(f"{self.network} has no inference spatial reduction")
        if setting == current:
            return
        if self._exporter is None:
            raise ValueError(
                f"{self.path} has ISR {current} baked in and cannot run ISR {setting}; export a graph for "
                f"{setting} (dense-perception export --isr-encoder/--isr-decoder) or create the engine with "
                f"onnx_engine_for_network to export it on demand")
        graph = self._open(self._exporter(setting))
        if graph.info.isr_setting != setting:
            raise EngineError(f"{graph.path}: the exporter made ISR {graph.info.isr}, not {setting}")
        self._graph = graph

    def describe(self) -> dict[str, Any]:
        info = self._graph.info
        described: dict[str, Any] = {
            "backend": self.backend, "network": info.network, "device": str(self.device),
            "providers": list(self._graph.session.get_providers()), "precision": info.precision,
            "input_size": (info.height, info.width), "batch": info.batch, "opset": info.opset,
            "weights": info.weights, "file": str(self._graph.path),
        }
        if info.isr:
            described["isr"] = info.isr
        if info.calibration:
            described["calibration"] = info.calibration
        if self._graph.widened_convs:
            described["nchwc_widened_convs"] = self._graph.widened_convs
        return described


def onnx_engine_for_network(net: nn.Module, height: int, width: int, cache_dir: str | os.PathLike,
                            precision: str = "fp32", providers: Sequence[str] | None = None,
                            threads: int | None = None, opset: int = MIN_OPSET,
                            calibration: Sequence[str | os.PathLike] | None = None) -> OnnxRuntimeEngine:
    """An engine for ``net`` at ``height``×``width`` with the network's current ISR setting.

    The graph is ``<cache_dir>/<network>_<H>x<W>_<isr slug or noisr>_<precision>.onnx``, reused when its
    metadata matches and (re-)exported otherwise; ``set_isr`` exports further settings there on demand.
    ``calibration``: int8 calibration images (None = the bundled sample; see :mod:`.quantize`).
    """
    cache = GraphCache(net, int(height), int(width), Path(cache_dir), precision, opset,
                       tuple(calibration) if calibration else None)
    return load_cached(cache, network_isr(net),
                       lambda path: OnnxRuntimeEngine(path, providers, threads, exporter=cache))


def load_cached(cache: GraphCache, isr: ISRSetting | None, load: Callable[[Path], Any]) -> Any:
    """``load(cache(isr))``; when the cached graph fails to load, it is exported again once (logged)
    and loaded again -- a second failure propagates."""
    path = cache(isr)
    try:
        return load(path)
    except EngineError as exc:
        log.warning("engine cache: %s failed to load (%s); exporting it again", path, exc)
    return load(cache.rebuild(isr))
