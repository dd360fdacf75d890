"""ONNX export: one fixed-shape graph per network, batch, input size, ISR setting and precision.

The graph has one input ``image`` ``[B, 3, H, W]`` float32 and one output, ``logits`` (segmentation)
or ``depth`` (depth networks), both float32 also in fp16 graphs. What the file was made for is stamped in
its ``metadata_props`` (:class:`GraphInfo`), so a loader can refuse a file made for another setting.

How a graph is made:

1. **Trace** with torch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``, still
   present in torch 2.13). It gives a plain graph at fixed shapes; the networks' Python checks (shape
   validation, ISR fit) run once at trace time and leave nothing in the graph, and ISR pooling ratios
   become constant ``AveragePool`` kernels -- which is why ISR is baked in.
2. **Fold constants** with ONNX Runtime's *basic* graph optimisations (standard ONNX operators only:
   constant folding, redundant-node removal, MatMul+Add -> Gemm). The traced
   ``scaled_dot_product_attention`` computes its scale at run time from ``Shape -> Slice -> Cast ->
   Sqrt``; folding turns that into a constant, which TensorRT and the fp16 conversion both prefer.
3. **int8** (optional, ONNX Runtime on the CPU): static QDQ quantisation of the folded graph, calibrated
   on real images (:mod:`.quantize`).
4. **fp16** (optional): ``onnxconverter_common.float16.convert_float_to_float16`` on the folded fp32
   graph, with float32 I/O (``keep_io_types``) and the numerically fragile operators kept in float32
   (:data:`FP16_KEEP_FLOAT`: normalisations, softmax, reductions, powers and square roots, plus the
   converter's own block list, which includes Resize). Converting the finished graph, rather than tracing
   a half-precision torch module, keeps one trace path for both precisions and needs no change to the
   networks (a half module would need every LayerNorm/GroupNorm wrapped to compute in float32, and
   CPU half kernels are incomplete). The fp16 graph feeds ONNX Runtime's CUDA provider and TensorRT's
   strongly typed fp16 builds (:mod:`.tensorrt_engine`), which take each tensor's type from the graph.
5. ``onnx.checker.check_model``, then an atomic write (temporary file in the target folder +
   ``os.replace``), so a reader never sees a half-written file. In the cache (:class:`GraphCache`)
   a manifest with the file's size and SHA-256 follows, checked before the graph is used again.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
import logging
import os
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from .. import __version__
from ..atomic import atomic_path
from ..networks.isr import ISRSetting
from ..networks.registry import network_spec
from .base import BACKEND_PRECISIONS, EngineError
from .quantize import calibration_inputs, calibration_label, quantize_int8

log = logging.getLogger(__name__)

INPUT_NAME = "image"
#: Output name by registry task.
OUTPUT_NAMES: Mapping[str, str] = MappingProxyType({"segmentation": "logits", "depth": "depth"})
#: Precisions a graph can have (the ONNX Runtime backend runs them all; TensorRT builds fp32/fp16).
PRECISIONS = BACKEND_PRECISIONS["onnxruntime"]
#: Lowest opset exported (LayerNormalization is a plain operator from 17 on).
MIN_OPSET = 17
#: Operators an fp16 graph keeps in float32 (on top of the converter's DEFAULT_OP_BLOCK_LIST).
FP16_KEEP_FLOAT = (
    "LayerNormalization", "InstanceNormalization", "GroupNormalization", "BatchNormalization",
    "Softmax", "ReduceMean", "ReduceSum", "Pow", "Sqrt", "Exp",
)
#: Prefix of every metadata key this package writes.
METADATA_PREFIX = "dense_perception."


@dataclass(frozen=True)
class GraphInfo:
    """What an exported graph was made for, as stamped in its metadata."""

    network: str
    task: str
    batch: int
    height: int
    width: int
    precision: str
    opset: int
    isr: str  # ISRSetting text, "" for networks without ISR
    weights_digest: str  # see weights_digest(); ties a cached graph to the weights it holds
    version: str  # dense_perception version that wrote it
    weights: str = "unspecified"  # "untrained", or the checkpoint's file name and sha256
    calibration: str = ""  # int8: the calibration images' label (quantize.calibration_label); else ""

    @property
    def isr_setting(self) -> ISRSetting | None:
        return ISRSetting.read(self.isr) if self.isr else None

    @property
    def isr_slug(self) -> str:
        setting = self.isr_setting
        return setting.slug if setting else "noisr"

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, 3, self.height, self.width)

    @property
    def output_name(self) -> str:
        return OUTPUT_NAMES[self.task]

    def to_props(self) -> dict[str, str]:
        """Metadata entries (strings), including the derived input size and ISR slug for readers."""
        props = {f.name: str(getattr(self, f.name)) for f in dataclasses.fields(self)}
        props.update(input_size=f"{self.height}x{self.width}", isr_slug=self.isr_slug)
        return {METADATA_PREFIX + k: v for k, v in props.items()}

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str) -> "GraphInfo":
        """Read the entries written by :meth:`to_props`; ``EngineError`` when they are missing or bad."""
        integers = ("batch", "height", "width", "opset")
        values: dict[str, Any] = {}
        try:
            for f in dataclasses.fields(cls):
                key = METADATA_PREFIX + f.name
                if key in props:
                    values[f.name] = int(props[key]) if f.name in integers else props[key]
            info = cls(**values)
            _ = info.isr_setting  # validates the ISR text
        except (TypeError, ValueError) as exc:
            raise EngineError(
                f"{source}: not an ONNX graph exported by dense_perception (its metadata lacks or garbles "
                f"the {METADATA_PREFIX}* entries: {exc}); export one with `dense-perception export`"
            ) from None
        if info.task not in OUTPUT_NAMES or info.precision not in PRECISIONS:
            raise EngineError(f"{source}: unknown task {info.task!r} or precision {info.precision!r} in metadata")
        return info

    def differences(self, **expected: Any) -> list[str]:
        """``"field: file has A, wanted B"`` for each given field whose value differs."""
        return [f"{name}: file has {getattr(self, name)!r}, wanted {value!r}"
                for name, value in expected.items() if getattr(self, name) != value]

    def cache_key(self) -> dict[str, Any]:
        """The fields a cached graph must match to be reused (everything but the ``weights`` label)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "weights"}


def weights_digest(net: nn.Module) -> str:
    """Short sha256 of the network's state_dict (names, dtypes, shapes, values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


def network_isr(net: nn.Module) -> ISRSetting | None:
    """The network's ISR setting now, or None for networks without ISR."""
    return net.isr if hasattr(net, "set_isr") else None


def graph_info(net: nn.Module, height: int, width: int, precision: str = "fp32", opset: int = MIN_OPSET,
               batch: int = 1, isr: ISRSetting | None = None, weights: str = "unspecified",
               calibration: Sequence[str | os.PathLike] | None = None) -> GraphInfo:
    """What :func:`export_onnx` would stamp for these arguments (``isr`` None = the network's own;
    ``calibration`` images matter for int8 only, None = the bundled sample)."""
    name = getattr(net, "name", None)
    if not isinstance(name, str):
        raise ValueError(f"{type(net).__name__} has no registry name (.name); cannot export it")
    spec = network_spec(name)
    setting = isr or network_isr(net)
    if setting is not None and not hasattr(net, "set_isr"):
        raise ValueError(f"{name} has no inference spatial reduction")
    return GraphInfo(network=name, task=spec.task, batch=int(batch), height=int(height), width=int(width),
                     precision=precision, opset=int(opset), isr=str(setting) if setting else "",
                     weights_digest=weights_digest(net), version=__version__, weights=weights,
                     calibration=calibration_label(calibration) if precision == "int8" else "")


def graph_file_name(info: GraphInfo) -> str:
    """``<network>_<H>x<W>_<isr slug or noisr>_<precision>[_b<B>]-<w8>-<k8>.onnx``: a readable label,
    8 hex of the weights digest and 8 hex of the SHA-256 of everything else the graph depends on
    (:meth:`GraphInfo.cache_key`: opset, package version, int8 calibration, ...), so two checkpoints
    or two calibrations never share (and evict) one file."""
    batch = f"_b{info.batch}" if info.batch != 1 else ""
    key = json.dumps(info.cache_key(), sort_keys=True, separators=(",", ":")).encode()
    return (f"{info.network}_{info.height}x{info.width}_{info.isr_slug}_{info.precision}{batch}"
            f"-{info.weights_digest[:8]}-{hashlib.sha256(key).hexdigest()[:8]}.onnx")


def _check_arguments(height: int, width: int, precision: str, opset: int, batch: int) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old; use {MIN_OPSET} or newer")
    if min(height, width, batch) < 1:
        raise ValueError(f"batch, height and width must be positive, got {batch}, {height}, {width}")


def _trace(net: nn.Module, info: GraphInfo) -> bytes:
    """The TorchScript-exporter graph at fixed shapes, as serialised bytes."""
    device = next(net.parameters()).device
    dummy = torch.zeros(info.input_shape, device=device)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # trace-time Python checks (shape validation, ISR fit) are meant to become constants
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message="Constant folding")  # done by _fold_constants instead
        torch.onnx.export(net, (dummy,), buffer, dynamo=False, opset_version=info.opset,
                          input_names=[INPUT_NAME], output_names=[info.output_name],
                          do_constant_folding=False)  # _fold_constants does it, several times faster
    return buffer.getvalue()


def _fold_constants(model_bytes: bytes) -> onnx.ModelProto:
    """ONNX Runtime's basic (standard-operator) optimisations, written back as an ONNX model."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    options.add_session_config_entry("session.disable_prepacking", "1")  # this session never runs
    with tempfile.TemporaryDirectory(prefix="dp_fold_") as folder:
        options.optimized_model_filepath = os.path.join(folder, "folded.onnx")
        ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        model = onnx.load(options.optimized_model_filepath)
    used = {node.domain for node in model.graph.node} | {""}
    kept = [op for op in model.opset_import if op.domain in used]  # ORT lists all of its own domains
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return model


def _to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise EngineError("fp16 ONNX export needs onnxconverter-common: pip install onnxconverter-common") from None
    with warnings.catch_warnings():
        # one warning per weight below 1e-7, which fp16 cannot hold (the converter rounds it to 1e-7)
        warnings.simplefilter("ignore", UserWarning)
        return float16.convert_float_to_float16(
            model, keep_io_types=True, op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + list(FP16_KEEP_FLOAT))


def export_onnx(net: nn.Module, out_path: str | os.PathLike, height: int, width: int, precision: str = "fp32",
                opset: int = MIN_OPSET, batch: int = 1, isr: ISRSetting | None = None,
                weights: str = "unspecified", calibration: Sequence[str | os.PathLike] | None = None) -> Path:
    """Export ``net`` (a registry network) as a fixed-shape ONNX graph at ``out_path``.

    Args:
        height, width, batch: the fixed input shape ``[batch, 3, height, width]``.
        precision: ``fp32``, ``fp16`` or ``int8`` (float32 input and output either way).
        opset: ONNX opset, 17 or newer.
        isr: EDAFormer ISR setting to bake in; None = the network's current one. ``net`` is not changed.
        weights: label stamped in the metadata (``"untrained"``, a checkpoint name and hash, ...).
        calibration: int8 only: image files or folders whose views calibrate the activation ranges;
            None = the bundled sample photograph (see :mod:`.quantize`).

    Raises:
        ValueError: bad arguments, an ISR that does not fit the size, a size the network refuses.
        EngineError: fp16 requested without onnxconverter-common.
    """
    _check_arguments(height, width, precision, opset, batch)
    info = graph_info(net, height, width, precision, opset, batch, isr, weights, calibration)
    return write_graph(net, info, Path(out_path), calibration)


def write_graph(net: nn.Module, info: GraphInfo, out_path: Path,
                calibration: Sequence[str | os.PathLike] | None = None) -> Path:
    """Trace, fold, convert and save the graph ``info`` describes (see the module docstring);
    ``calibration`` as in :func:`export_onnx`."""
    setting = info.isr_setting
    if setting is not None:
        if setting != net.isr:
            net = copy.deepcopy(net)
            net.set_isr(setting)
        net.check_isr(info.height, info.width)
    model = _fold_constants(_trace(net.eval(), info))
    if info.precision == "fp16":
        model = _to_fp16(model)
    elif info.precision == "int8":
        inputs = calibration_inputs(info.network, info.height, info.width, calibration)
        if info.batch > 1:
            inputs = [np.concatenate([x] * info.batch) for x in inputs]
        log.info("quantising %s to int8 (calibration: %s)", info.network, info.calibration)
        model = quantize_int8(model, inputs, INPUT_NAME)
    model.producer_name, model.producer_version = "dense_perception", __version__
    model.doc_string = f"{info.network} {info.task}, input {INPUT_NAME} {list(info.input_shape)}"
    onnx.helper.set_model_props(model, info.to_props())
    onnx.checker.check_model(model)
    with atomic_path(out_path) as tmp:
        onnx.save(model, tmp)
    log.info("exported %s (%s) to %s", info.network, info.isr or "no ISR", out_path)
    return out_path


def read_graph_info(model: onnx.ModelProto | str | os.PathLike) -> GraphInfo:
    """The :class:`GraphInfo` stamped in a model or file; ``EngineError`` for a corrupt or foreign file."""
    source = "<model>"
    if not isinstance(model, onnx.ModelProto):
        source = os.fspath(model)
        try:
            model = onnx.load(source)
        except FileNotFoundError:
            raise EngineError(f"{source}: no such ONNX file") from None
        except Exception as exc:  # protobuf DecodeError and friends
            raise EngineError(f"{source}: not a readable ONNX file ({type(exc).__name__}: {exc})") from None
    return GraphInfo.from_props({p.key: p.value for p in model.metadata_props}, source)


@dataclass(frozen=True)
class GraphCache:
    """Graphs of one network at one size and precision in a cache folder, exported on demand.

    ``cache(setting)`` returns ``<folder>/<graph_file_name>``: the file is reused only when it is the
    user's own and not writable by others, its manifest (written by the cache after the graph: size
    and SHA-256, :func:`~.cache.write_manifest`) matches, and its metadata matches what is wanted
    (network, size, ISR, precision, opset, package version, weights digest); otherwise it is exported
    again, with the reason logged. :meth:`rebuild` re-exports unconditionally (after a failed load).
    The folder goes through :func:`~.cache.ensure_private_dir`: one that cannot be used means no
    caching (a private temporary folder), never a failure. The network is never modified.
    """

    net: nn.Module
    height: int
    width: int
    folder: Path
    precision: str = "fp32"
    opset: int = MIN_OPSET
    #: int8 calibration images (files or folders); None = the bundled sample
    calibration: tuple[str | os.PathLike, ...] | None = None

    def __post_init__(self) -> None:
        _check_arguments(self.height, self.width, self.precision, self.opset, 1)

    def _wanted(self, isr: ISRSetting | None) -> tuple[GraphInfo, Path]:
        from .cache import ensure_private_dir

        wanted = graph_info(self.net, self.height, self.width, self.precision, self.opset, 1, isr,
                            calibration=self.calibration)
        return wanted, ensure_private_dir(self.folder) / graph_file_name(wanted)

    def __call__(self, isr: ISRSetting | None = None) -> Path:
        wanted, path = self._wanted(isr)
        problem = _cache_problem(path, wanted)
        if problem is None:
            log.debug("reusing %s", path)
            return path
        if problem == "not exported yet":
            log.info("exporting %s", path)
        else:
            log.warning("engine cache: %s: %s; exporting it again", path, problem)
        return self._export(wanted, path)

    def rebuild(self, isr: ISRSetting | None = None) -> Path:
        """Export the graph for ``isr`` again, whatever is cached (its load failed)."""
        wanted, path = self._wanted(isr)
        return self._export(wanted, path)

    def _export(self, wanted: GraphInfo, path: Path) -> Path:
        from .cache import remove_artefact, write_manifest

        remove_artefact(path)
        write_graph(self.net, wanted, path, self.calibration)
        write_manifest(path, "onnx graph")
        return path


#: ``torch.onnx.export`` keeps module-level state: exports from several threads (the background ISR
#: builds of several engines) take turns under this lock.
EXPORT_LOCK = threading.Lock()


def private_export_copy(net: nn.Module) -> nn.Module:
    """A CPU copy of an ISR network for a background exporter, so that ``set_isr`` on the caller's network
    cannot change it mid-trace; networks without ISR never change and are shared."""
    if not hasattr(net, "set_isr"):
        return net
    return copy.deepcopy(net).cpu().eval()


def _cache_problem(path: Path, wanted: GraphInfo) -> str | None:
    """Why the file at ``path`` cannot serve as ``wanted`` (missing, untrusted, no or another
    manifest, unreadable, other setting), or None."""
    from .cache import manifest_problem

    if not path.exists() and not path.is_symlink():
        return "not exported yet"
    problem = manifest_problem(path)
    if problem is not None:
        return f"refusing the file: {problem}"
    try:
        found = read_graph_info(path)
    except EngineError as exc:
        return f"replacing an unusable file ({exc})"
    differences = found.differences(**wanted.cache_key())
    return f"replacing a stale file ({'; '.join(differences)})" if differences else None
