"""The processing loop shared by ``dense-perception run`` and ``dense-perception demo``.

frame source → depth + labels (:mod:`dense_perception.api`) → coloured views
(:mod:`~dense_perception.pipeline.colormap`) → semantic cloud (the one cloud builder,
:func:`~dense_perception.pipeline.cloud.build_cloud`) → a writer (:mod:`dense_perception.io.writers`).

* Checkpoints: an explicit file, else the catalogue's file under ``models/``
  (``dense_perception.weights.find_checkpoint``), else a download of the official file when the
  network allows, else untrained weights — said plainly, with how to get the file, and every
  coloured output stamped "UNTRAINED".
* Camera: a frame's recorded camera_info (rescaled to the image when its size differs), else
  :func:`default_camera`: a pinhole with ``fov_deg`` (60°) horizontal field of view, square
  pixels, principal point at the image centre, no distortion.
* Point clouds need depth in metres: metric networks (``dpt_hybrid_nyu``, ``dpt_hybrid_kitti``), or
  MiDaS networks given ``depth_scale`` and ``depth_shift`` (a per-scene fit on inverse depth). For
  relative MiDaS depth without a fit no cloud is written — relative inverse depth has no scale, and
  any conversion would invent one.
* A frame that cannot be decoded, or that the pipeline rejects (``ValueError``), is skipped and
  counted; the summary lists the reasons.
* Ctrl-C: the first one stops after the frame in progress, the second at once; either way the
  writer is closed and holds every finished frame (:func:`run_frames`).
"""
from __future__ import annotations

import functools
import logging
import math
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .cli import COMMANDS, UsageError
from .defaults import DEFAULT_DEPTH_NETWORK, DEFAULT_SEG_NETWORK
from .io.sources import BadFrame, CameraInfoData, Frame, Source
from .io.writers import FrameOutputs, Writer
from .engines.host_memory import give_back_freed_memory
from .pipeline.cloud import CameraModel, build_cloud
from .pipeline.colormap import StableRange, colorize_depth, colorize_labels, overlay
from .pipeline.pairing import FramePairing

log = logging.getLogger(__name__)

#: Horizontal field of view of the default camera model, degrees.
DEFAULT_FOV_DEG = 60.0
#: Text drawn on every coloured output made with untrained weights.
UNTRAINED_STAMP = "UNTRAINED"
#: How many skipped frames the summary lists by reason.
_LISTED_SKIPS = 5
#: The streams besides depth that a cloud is built from (paired by :class:`FramePairing`).
CLOUD_INPUTS = ("labels", "color")
#: Prefix of the notes a run writes into its output's metadata.
NOTE_PREFIX = "dense_perception."


def default_camera(width: int, height: int, fov_deg: float = DEFAULT_FOV_DEG) -> CameraInfoData:
    """The assumed camera of an input without camera_info (images, videos).

    Pinhole, no distortion, square pixels: ``fx = fy = (width / 2) / tan(fov_deg / 2)``, principal
    point at the image centre ``((width - 1) / 2, (height - 1) / 2)`` (pixel centres at integer
    coordinates, the ROS/OpenCV convention).
    """
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"--fov must be between 0 and 180 degrees, got {fov_deg}")
    focal = (width / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
    k = (focal, 0.0, (width - 1) / 2.0, 0.0, focal, (height - 1) / 2.0, 0.0, 0.0, 1.0)
    return CameraInfoData(width=width, height=height, k=k, d=(0.0,) * 5,
                          distortion_model="plumb_bob")


def camera_for_image(recorded: CameraInfoData | None, width: int, height: int,
                     fov_deg: float = DEFAULT_FOV_DEG) -> tuple[CameraInfoData, str]:
    """The intrinsics to use for a ``width`` x ``height`` image, and where they came from.

    A recorded camera_info of another size is rescaled (same field of view); one without a focal
    length (uncalibrated, all zeros) is replaced by :func:`default_camera`.
    """
    fallback = f"default pinhole model ({fov_deg:g} deg horizontal FOV, principal point at the centre)"
    if recorded is None:
        return default_camera(width, height, fov_deg), fallback
    try:
        model = CameraModel.from_camera_info(recorded).for_image(width, height)
    except ValueError as exc:
        return default_camera(width, height, fov_deg), f"{fallback}; recorded camera_info unusable: {exc}"
    if (recorded.width, recorded.height) == (width, height):
        return recorded, "recorded camera_info"
    rescaled = CameraInfoData(width=width, height=height, k=tuple(model.K.reshape(-1).tolist()),
                              d=recorded.d, distortion_model=recorded.distortion_model, r=recorded.r)
    return rescaled, f"recorded camera_info rescaled from {recorded.width}x{recorded.height}"


def stamp_untrained(image: np.ndarray, text: str = UNTRAINED_STAMP) -> np.ndarray:
    """A copy of an RGB uint8 image with a red banner reading ``text`` across its top."""
    import cv2

    stamped = np.ascontiguousarray(image).copy()
    height, width = stamped.shape[:2]
    (unit_w, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 1.0, 2)
    scale = max(0.25, min(1.2, 0.9 * width / unit_w))  # fits the width
    thickness = max(1, int(round(scale * 2)))
    (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    banner = min(height, text_h + baseline + 4)
    stamped[:banner] = (200, 0, 0)
    cv2.putText(stamped, text, (max(0, (width - text_w) // 2), banner - baseline - 2),
                cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return stamped


# -- checkpoints and networks ----------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointChoice:
    """The checkpoint a network runs with (None = untrained) and one line saying why."""

    path: Path | None
    note: str


def _weights_module() -> Any | None:
    """``dense_perception.weights`` when installed and complete, else None."""
    try:
        from . import weights
    except ImportError:
        return None
    if not hasattr(weights, "find_checkpoint"):
        return None
    return weights


def _how_to_get(network: str, weights: Any | None) -> str:
    """How to get ``network``'s checkpoint: the catalogue's hint where it has one."""
    hint = getattr(weights, "download_hint", None)
    if hint is not None:
        try:
            return " ".join(str(hint(network)).split())
        except Exception:  # noqa: BLE001 - no catalogue entry: fall back to the generic advice
            pass
    command = (f"`dense-perception weights download {network}`, or " if "weights" in COMMANDS
               else "")
    return (f"get it with {command}put the official file in models/ (models/README.md lists "
            "them) or pass it with --depth-checkpoint/--seg-checkpoint")


def resolve_checkpoint(network: str, explicit: str | Path | None, search: bool = True,
                       download: bool = True) -> CheckpointChoice:
    """Where ``network``'s weights come from: ``explicit``, else ``models/``, else a download.

    ``search=False`` skips the look-up (untrained on purpose). A missing explicit file raises
    ``FileNotFoundError``; every other failure falls back to untrained weights with a note saying
    why and how to get the file (``dense_perception.weights.download_hint``).
    """
    if explicit is not None:
        from .networks.checkpoint import CheckpointError, file_problem

        path = Path(explicit)
        problem = file_problem(str(path))
        if problem == "does not exist":
            raise FileNotFoundError(f"{path}: checkpoint file not found")
        if problem is not None:
            raise CheckpointError(f"checkpoint {path} {problem}")
        return CheckpointChoice(path, f"{network}: checkpoint {path}")
    if not search:
        return CheckpointChoice(None, f"{network}: UNTRAINED weights (asked for with --untrained)")
    weights = _weights_module()
    if weights is None:
        reason = "the checkpoint catalogue (dense_perception.weights) is not available"
    else:
        found = weights.find_checkpoint(network)
        if found is not None:  # verified before use: its pin, else a full check (CheckpointError)
            weights.ensure_verified(found, network)
            return CheckpointChoice(Path(found), f"{network}: checkpoint {found} (verified)")
        reason = "no checkpoint under models/"
        if not download:
            reason += " and downloads are off (--no-download)"
        elif not hasattr(weights, "download"):
            reason += " and no downloader"
        else:
            try:
                path = Path(weights.download(network))
                return CheckpointChoice(path, f"{network}: downloaded checkpoint {path}")
            except Exception as exc:  # noqa: BLE001 - no network, no URL, bad file: all say why
                manual = getattr(weights, "ManualDownloadRequired", ())
                if not (manual and isinstance(exc, manual)):  # the hint below says it all
                    reason += f"; download failed: {_one_line(exc)}"
    return CheckpointChoice(None, f"{network}: {reason}. Running with UNTRAINED random weights "
                            f"(outputs are meaningless); {_how_to_get(network, weights)}.")


@dataclass(frozen=True)
class ModelOptions:
    """Which networks to build and how (the command line's model options)."""

    depth: str = DEFAULT_DEPTH_NETWORK
    seg: str = DEFAULT_SEG_NETWORK
    depth_checkpoint: str | None = None
    seg_checkpoint: str | None = None
    search: bool = True  # False: untrained on purpose
    download: bool = True
    backend: str = "auto"
    precision: str = "fp32"
    calibration: tuple[str, ...] | None = None  # int8 calibration images (None = the bundled sample)
    device: str | None = None
    input_size: tuple[int, int] | None = None
    isr: Any = 1  # ISRSetting, int ratio or its text (networks without ISR: 1 only)
    inference: str | None = None  # segmentation: "whole" or "slide" (None: the network's official mode)
    depth_scale: float | None = None
    depth_shift: float | None = None
    frame_budget_ms: float = 0.0  # each network holds it (0 = off); see api.frame_budget_problem


@dataclass
class Models:
    """The two predictors and the lines saying where their weights came from."""

    depth: Any  # DepthEstimator
    seg: Any  # Segmenter
    notes: list[str]

    @property
    def untrained(self) -> list[str]:
        """Names of the networks running with untrained weights."""
        return [p.network for p in (self.depth, self.seg) if p.untrained]


def load_models(options: ModelOptions) -> Models:
    """Build the depth estimator and segmenter of ``options`` (checkpoints via :func:`resolve_checkpoint`)."""
    from .api import DepthEstimator, Segmenter

    depth_ckpt = resolve_checkpoint(options.depth, options.depth_checkpoint, options.search,
                                    options.download)
    seg_ckpt = resolve_checkpoint(options.seg, options.seg_checkpoint, options.search,
                                  options.download)
    depth = DepthEstimator(options.depth, checkpoint=depth_ckpt.path, backend=options.backend,
                           precision=options.precision, device=options.device,
                           input_size=options.input_size, depth_scale=options.depth_scale,
                           depth_shift=options.depth_shift, calibration=options.calibration,
                           frame_budget_ms=options.frame_budget_ms)
    seg = Segmenter(options.seg, checkpoint=seg_ckpt.path, backend=options.backend,
                    precision=options.precision, device=options.device,
                    input_size=options.input_size, isr=options.isr, inference=options.inference,
                    calibration=options.calibration, frame_budget_ms=options.frame_budget_ms)
    return Models(depth, seg, [depth_ckpt.note, seg_ckpt.note])


#: Frames of at least this many pixels (4 MP) hand the memory malloc keeps for the next frame back
#: before they are written (:func:`~dense_perception.engines.host_memory.give_back_freed_memory`):
#: their cloud alone is 80 MB or more, and the storage writer holds several copies of it.
LARGE_FRAME_PIXELS = 4_000_000


# -- one frame -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessOptions:
    """Per-frame settings: camera fallback, cloud filters (the cloud node's), colouring."""

    fov_deg: float = DEFAULT_FOV_DEG
    cloud_stride: int = 1
    min_depth: float = 0.0
    max_depth: float = 100.0
    colormap: str = "turbo"
    overlay_alpha: float = 0.5


class FrameProcessor:
    """Turns :class:`Frame` objects into :class:`FrameOutputs` with one depth estimator and segmenter.

    Keeps a :class:`StableRange` so depth colours do not flicker along a video, and remembers where
    the intrinsics came from (``camera_source``) for the summary.
    """

    def __init__(self, models: Models, options: ProcessOptions = ProcessOptions()) -> None:
        if options.cloud_stride < 1:
            raise ValueError(f"--cloud-stride must be at least 1, got {options.cloud_stride}")
        if not options.min_depth < options.max_depth:
            raise ValueError(f"--min-depth ({options.min_depth}) must be below --max-depth "
                             f"({options.max_depth})")
        default_camera(2, 2, options.fov_deg)  # validates the field of view now, not per frame
        self.models = models
        self.options = options
        self.depth_kind = ""
        self.camera_source = ""
        self._range: StableRange | None = None
        #: network input sizes served so far, per task (for the summary and the metadata)
        self.network_sizes: dict[str, set[tuple[int, int]]] = {"depth": set(), "seg": set()}
        #: frames served per ISR setting (a frame budget may change it along the run)
        self.isr_frames: Counter[str] = Counter()
        # the package's one pairing of a cloud's inputs (the ROS nodes' too); frames come one at
        # a time and in order here, so they are keyed by their sequence number, not by stamp
        # (a recording may hold two frames with one stamp)
        self._pairing = FramePairing(CLOUD_INPUTS)
        self._sequence = 0

    def process(self, frame: Frame) -> FrameOutputs:
        """Depth, labels, coloured views and (for metric depth) the cloud of one frame.

        ``ValueError`` for a frame the pipeline rejects (the caller skips it); ``UsageError`` when
        the ISR setting cannot run at this frame's size.
        """
        rgb = frame.rgb
        height, width = rgb.shape[:2]
        seg = self.models.seg
        try:  # an ISR setting that cannot run is the user's choice, not a bad frame
            seg.check_isr(seg.isr, height, width)
        except ValueError as exc:
            raise UsageError(f"ISR {seg.isr_text(seg.isr)} cannot run on {width}x{height} frames: {exc}") from None
        key = (self._sequence, 0)
        self._sequence += 1
        self._pairing.claim(key)
        depth_result = self.models.depth.predict(rgb)
        seg_result = seg.predict(rgb)
        labels = seg_result.labels
        self.network_sizes["depth"].add(tuple(depth_result.network_size))
        self.network_sizes["seg"].add(tuple(seg_result.network_size))
        self.isr_frames[seg.isr_text(seg_result.isr)] += 1
        self._pairing.add("labels", key, labels)
        self._pairing.add("color", key, rgb)
        paired = self._pairing.add_depth(key, depth_result, CLOUD_INPUTS)[-1]
        if paired.missing:  # cannot happen with one frame at a time; never build a partial cloud
            raise ValueError(f"cloud inputs missing: {paired.missing}")
        depth = depth_result.depth.astype(np.float32, copy=False)
        self.depth_kind = depth_result.kind
        inverse = depth_result.kind == "relative_inverse"
        if self._range is None:
            self._range = StableRange(inverse=inverse)
        vmin, vmax = self._range.update(depth)
        depth_colored = colorize_depth(depth, vmin, vmax, self.options.colormap, inverse=inverse)
        seg_colored = overlay(rgb, colorize_labels(labels, seg.palette), self.options.overlay_alpha)
        if self.models.depth.untrained:
            depth_colored = stamp_untrained(depth_colored)
        if seg.untrained:
            seg_colored = stamp_untrained(seg_colored)
        camera, self.camera_source = camera_for_image(frame.camera_info, width, height,
                                                      self.options.fov_deg)
        make_cloud = None
        if depth_result.is_metric:  # built by each writer that needs it (FrameOutputs.make_cloud)
            make_cloud = functools.partial(
                build_cloud, paired.depth.depth.astype(np.float32, copy=False),
                np.asarray(camera.k, dtype=np.float64).reshape(3, 3), rgb=paired.items["color"],
                labels=paired.items["labels"], stride=self.options.cloud_stride,
                min_depth=self.options.min_depth, max_depth=self.options.max_depth)
        return FrameOutputs(frame, camera, depth, depth_result.kind, depth_colored, labels,
                            seg_colored, make_cloud)


    def notes(self) -> dict[str, str]:
        """What ran, for the output's metadata and the summary: networks, weights identity,
        backend, precision, the ISR setting served, network input sizes, depth units."""
        depth, seg = self.models.depth, self.models.seg

        def sizes(task: str) -> str:
            return ", ".join(f"{h}x{w}" for h, w in sorted(self.network_sizes[task])) or "none yet"

        def budget(predictor: Any, task: str) -> str:
            state = predictor.budget_state
            if state is None:
                return f"{task} off"
            details = ", ".join(f"{key} {value}" for key, value in state.describe().items()
                                if key != "frame budget")
            return f"{task} {1e3 * state.budget_s:.0f} ms ({details})"

        if len(self.isr_frames) > 1:  # the budget switched settings: how many frames each served
            served_isr = ", ".join(f"{setting} ({count} frames)" for setting, count in self.isr_frames.items())
        else:
            served_isr = seg.isr_text(seg.isr)

        return {
            f"{NOTE_PREFIX}depth_network": depth.network,
            f"{NOTE_PREFIX}seg_network": seg.network,
            f"{NOTE_PREFIX}depth_weights": depth.weights_identity,
            f"{NOTE_PREFIX}seg_weights": seg.weights_identity,
            f"{NOTE_PREFIX}backend": f"depth {depth.backend}, seg {seg.backend}",
            f"{NOTE_PREFIX}precision": f"depth {depth.precision}, seg {seg.precision}",
            f"{NOTE_PREFIX}isr_served": served_isr,
            f"{NOTE_PREFIX}frame_budget": budget(depth, "depth") + "; " + budget(seg, "seg"),
            f"{NOTE_PREFIX}input_size": f"depth {sizes('depth')}; seg {sizes('seg')}",
            f"{NOTE_PREFIX}depth_units": self.depth_kind or "none yet",
            f"{NOTE_PREFIX}untrained": ",".join(self.models.untrained) or "none",
        }


def describe_depth(kind: str, network: str) -> str:
    """One line on what the depth values mean and whether clouds were written."""
    if kind == "metric":
        return f"depth ({network}): metres (metric network); point clouds written"
    if kind == "metric_fitted":
        return (f"depth ({network}): metres from --depth-scale/--depth-shift (a fit on relative "
                "inverse depth); point clouds written")
    return (f"depth ({network}): RELATIVE INVERSE depth (MiDaS; larger = nearer, no unit); no point "
            "clouds — give --depth-scale and --depth-shift for metres, or use dpt_hybrid_nyu/kitti")


# -- the loop --------------------------------------------------------------------------------------


@dataclass
class RunSummary:
    """What a run did, for the final report."""

    read: int = 0
    written: int = 0
    clouds: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    interrupted: bool = False
    signal: str | None = None  # the signal that stopped the run
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)  # messages (or files) written per topic

    def lines(self) -> list[str]:
        rate = self.written / self.seconds if self.seconds > 0 else 0.0
        lines = [f"frames: {self.written} written, {len(self.skipped)} skipped, {self.read} read "
                 f"in {self.seconds:.1f} s ({rate:.2f} frames/s); {self.clouds} point clouds"]
        if self.counts:
            lines.append("written: " + ", ".join(f"{topic} {count}" for topic, count in self.counts.items()))
        if self.interrupted:
            lines.append(f"interrupted ({self.signal or 'SIGINT'}): the output is closed and holds "
                         "every finished frame")
        for index, reason in self.skipped[:_LISTED_SKIPS]:
            lines.append(f"skipped frame {index}: {reason}")
        if len(self.skipped) > _LISTED_SKIPS:
            lines.append(f"... and {len(self.skipped) - _LISTED_SKIPS} more skipped frames")
        return lines


class Interrupts:
    """The stop policy of a run, for Ctrl-C (SIGINT) and SIGTERM alike.

    The first signal sets :attr:`stop` (the loop ends after the frame in progress); the second
    raises ``KeyboardInterrupt`` at once -- except inside :meth:`protected` (a frame being written),
    where it waits for the end of the write, so the output never holds half a frame. Later ones
    are ignored, so nothing cuts the closing of the output short. :attr:`signal_name` is the first
    signal received (for the exit status and the closing line).
    """

    #: The signals handled.
    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.signal_name: str | None = None
        self._protected = False
        self._abort_pending = False
        self._aborted = False

    def handle(self, signum: int, frame: Any) -> None:
        """The signal handler."""
        if not self.stop.is_set():
            self.stop.set()
            self.signal_name = signal.Signals(signum).name
            _say(f"{self.signal_name}: stopping after the current frame (again to stop at once)")
        elif self._protected:
            self._abort_pending = True
        elif not self._aborted:  # later ones must not cut short the closing of the output
            self._aborted = True
            raise KeyboardInterrupt

    @property
    def exit_status(self) -> int:
        """128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM), as shells report it."""
        number = getattr(signal, self.signal_name or "SIGINT")
        return 128 + int(number)

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Handle the signals while active (only in the main thread; elsewhere nothing changes)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle) for sig in self.SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @contextmanager
    def protected(self) -> Iterator[None]:
        """A section a second signal does not cut short (it takes effect right after)."""
        self._protected = True
        try:
            yield
        finally:
            self._protected = False
        if self._abort_pending and not self._aborted:
            self._aborted = True
            raise KeyboardInterrupt


def _say(line: str) -> None:
    """One line on stderr that does not break a progress bar."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


def run_frames(source: Source, writer: Writer, processor: FrameProcessor,
               max_frames: int | None = None, progress: bool = True,
               interrupts: Interrupts | None = None) -> RunSummary:
    """Process and write ``source``'s frames; returns the summary (also after Ctrl-C).

    ``max_frames``: stop after this many frames read (written or skipped). The writer is entered
    here; a finished or interrupted run (SIGINT, SIGTERM: :class:`Interrupts`) closes it with every
    frame written whole and the processor's notes (:meth:`FrameProcessor.notes`) in its metadata.
    Exceptions other than bad frames propagate after the writer discarded its output (a write
    failure is an :class:`~dense_perception.io.writers.OutputError`). Log lines are written above
    the progress bar, never through it.
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    if max_frames is not None and max_frames < 1:
        raise ValueError(f"--max-frames must be at least 1, got {max_frames}")
    interrupts = interrupts or Interrupts()
    summary = RunSummary()
    expected = source.expected_frames()
    if max_frames is not None:
        expected = max_frames if expected is None else min(expected, max_frames)
    start = time.perf_counter()
    bar = tqdm(total=expected, unit="frame", disable=not progress, file=sys.stderr,
               dynamic_ncols=True, smoothing=0.1)
    frames = source.frames()
    try:
        with logging_redirect_tqdm(), interrupts.installed(), writer:
            try:
                for item in frames:
                    summary.read += 1
                    _handle(item, writer, processor, summary, interrupts)
                    bar.update(1)
                    if interrupts.stop.is_set():
                        break
                    if max_frames is not None and summary.read >= max_frames:
                        break
            finally:  # what ran goes into the output's metadata, whatever ended the loop
                summary.interrupted = interrupts.stop.is_set()
                summary.signal = interrupts.signal_name
                writer.annotate(processor.notes())
                summary.counts = writer.counts()
    except KeyboardInterrupt:
        summary.interrupted = True
        summary.signal = interrupts.signal_name or "SIGINT"
    finally:
        bar.close()
        close = getattr(frames, "close", None)
        if close is not None:
            close()
        summary.seconds = time.perf_counter() - start
    summary.counts = writer.counts()
    return summary


def _handle(item: Frame | BadFrame, writer: Writer, processor: FrameProcessor,
            summary: RunSummary, interrupts: Interrupts) -> None:
    if isinstance(item, BadFrame):
        summary.skipped.append((item.index, item.reason))
        log.debug("skipped frame %d: %s", item.index, item.reason)
        return
    try:
        outputs = processor.process(item)
    except ValueError as exc:
        summary.skipped.append((item.index, _one_line(exc)))
        log.debug("skipped frame %d: %s", item.index, exc)
        return
    if outputs.frame.rgb.shape[0] * outputs.frame.rgb.shape[1] >= LARGE_FRAME_PIXELS:
        give_back_freed_memory()  # the writer's copies of a large cloud would stack on the kept heap
    with interrupts.protected():
        writer.write(outputs)
        summary.written += 1
        summary.clouds += outputs.make_cloud is not None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
