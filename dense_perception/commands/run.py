"""``dense-perception run INPUT --out OUT``: depth, labels and semantic clouds for recorded input.

INPUT: an image, a folder of images, a video (anything OpenCV opens), or a rosbag2 (MCAP or
sqlite3; ``--topic`` picks the image topic, recorded camera_info is used). OUT: a rosbag2 with the
ROS nodes' topics and message types (``--format mcap``, the default, or ``sqlite3``), or per-frame
files (``--format files``, or a comma list of ``png,npy,ply``).
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from ..defaults import DEFAULT_DEPTH_NETWORK, DEFAULT_SEG_NETWORK
from ..engines.base import PRECISIONS
from ..io.images import DEFAULT_MAX_INPUT_PIXELS
from ..io.sources import DEFAULT_FPS, DEFAULT_FRAME_ID, open_source
from ..io.writers import (BAG_FORMATS, COMPRESSIONS, BagWriter, FilesWriter, OutputError, bag_storage_for,
                          parse_file_kinds)
from ..networks import available_networks, network_spec
from ..networks.registry import INFERENCE_MODES
from ..runner import (DEFAULT_FOV_DEG, NOTE_PREFIX, FrameProcessor, ModelOptions, ProcessOptions,
                      describe_depth, load_models, run_frames)
from .info import add_isr_arguments, isr_from_args

EPILOG = """\
output topics (bag formats), all stamped with the input frame's header:
  /camera/image (rgb8), /camera/camera_info, /depth/image (32FC1), /depth/camera_info,
  /depth/colored (rgb8), /seg/labels (mono8, 16UC1 above 256 classes), /seg/colored (rgb8 overlay),
  /points (PointCloud2: x y z float32, rgb packed float32, label uint16; camera optical frame).

depth units: metres for metric networks (dpt_hybrid_nyu, dpt_hybrid_kitti). MiDaS networks
(dpt_hybrid_midas, dpt_large_midas) give RELATIVE INVERSE depth (larger = nearer, no unit): then no
point cloud is written, because relative depth has no scale — unless --depth-scale and
--depth-shift give a per-scene fit on inverse depth (metres = 1 / (scale * d + shift)).

camera: a rosbag2's recorded camera_info; for images and videos a pinhole model with --fov degrees
horizontal field of view (default 60), square pixels, principal point at the image centre.

stamps: bag frames keep their header stamps; video frames are index / frame rate; image folders are
index / --fps from zero.

Ctrl-C or SIGTERM stops after the current frame (twice: at once); the output is closed, moved to
OUT and valid either way, and the exit status is 130 (Ctrl-C) or 143 (SIGTERM). The output is
written under a temporary name beside OUT and appears there only when closed: a failed run, or one
that cannot write (permission, disk full: one line, exit status 1), leaves nothing behind.

files: checkpoints are looked for in $DENSE_PERCEPTION_MODELS (else ./models) and verified before use;
ONNX Runtime graphs and TensorRT engines are cached in $DENSE_PERCEPTION_CACHE (else
$XDG_CACHE_HOME/dense_perception/engines, else ~/.cache/dense_perception/engines).

metadata: the bag's custom_data (run.json for files) records the networks, the weights' identity
(checkpoint file, or untrained with its seed, and the weights' sha256), backends, precision, the ISR
setting served and the network input sizes; the bag's own metadata counts messages per topic, and
only topics with messages are declared.
"""


def add_model_arguments(parser: argparse.ArgumentParser, depth_default: str,
                        seg_default: str) -> None:
    """Network, checkpoint, backend and size options shared by ``run`` and ``demo``."""
    group = parser.add_argument_group("networks")
    group.add_argument("--depth", default=depth_default, choices=available_networks("depth"),
                       metavar="NAME", help=f"depth network (default {depth_default}; one of "
                       + ", ".join(available_networks("depth")) + ")")
    group.add_argument("--seg", default=seg_default, choices=available_networks("segmentation"),
                       metavar="NAME", help=f"segmentation network (default {seg_default}; one of "
                       + ", ".join(available_networks("segmentation")) + ")")
    group.add_argument("--depth-checkpoint", metavar="FILE",
                       help="depth checkpoint (default: the official file under models/)")
    group.add_argument("--seg-checkpoint", metavar="FILE",
                       help="segmentation checkpoint (default: the official file under models/)")
    group.add_argument("--no-download", action="store_true",
                       help="do not download missing official checkpoints")
    group.add_argument("--untrained", action="store_true",
                       help="use untrained random weights on purpose (smoke tests); outputs are "
                       "stamped UNTRAINED")
    group.add_argument("--backend", default="auto", choices=("auto", "torch", "onnxruntime"),
                       help="inference backend (default auto)")
    group.add_argument("--precision", default="fp32", choices=PRECISIONS,
                       help="fp16/bf16 need CUDA; int8 runs in ONNX Runtime (CPU), faster at an "
                       "accuracy cost")
    group.add_argument("--calibration", nargs="+", default=None, metavar="IMAGE_OR_FOLDER",
                       help="int8 only: images calibrating the quantised graphs (default: the "
                       "bundled sample; frames of your own camera fit your scenes better)")
    group.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: "
                       "cuda when available)")
    group.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                       help="network input size for both networks (default: each network's "
                       "official resize of the image)")
    group.add_argument("--depth-scale", type=float, default=None,
                       help="MiDaS only: scale of the fit on inverse depth (with --depth-shift)")
    group.add_argument("--depth-shift", type=float, default=None,
                       help="MiDaS only: shift of the fit on inverse depth (with --depth-scale)")
    group.add_argument("--inference", default=None, choices=INFERENCE_MODES,
                       help="segmentation: whole (one forward per image; fast) or slide (the network's "
                       "sliding windows); default: the network's official test mode (slide for the "
                       "Cityscapes networks and ViT-CoMer, else whole)")
    add_isr_arguments(parser)
    parser.add_argument_group("frame budget").add_argument(
        "--frame-budget-ms", type=float, default=0.0, metavar="MS",
        help="hold this many milliseconds per frame for EACH network (0 = off, the default): the "
        "segmenter serves the least ISR reduction (networks without ISR: the largest input size), the "
        "depth network the largest input size, whose "
        "measured frame time holds it; the summary says what was served")
    cloud = parser.add_argument_group("camera and point cloud")
    cloud.add_argument("--fov", type=float, default=DEFAULT_FOV_DEG, metavar="DEG",
                       help="horizontal field of view of the default camera model, for inputs "
                       f"without camera_info (default {DEFAULT_FOV_DEG:g})")
    cloud.add_argument("--cloud-stride", type=int, default=1, metavar="N",
                       help="use every N-th row and column for the cloud (default 1)")
    cloud.add_argument("--min-depth", type=float, default=0.0, help="drop closer points (metres)")
    cloud.add_argument("--max-depth", type=float, default=100.0, help="drop farther points (metres)")


def model_options(args: argparse.Namespace) -> ModelOptions:
    return ModelOptions(
        depth=args.depth, seg=args.seg, depth_checkpoint=args.depth_checkpoint,
        seg_checkpoint=args.seg_checkpoint, search=not args.untrained,
        download=not args.no_download, backend=args.backend, precision=args.precision,
        calibration=tuple(args.calibration) if args.calibration else None,
        device=args.device, input_size=tuple(args.input_size) if args.input_size else None,
        isr=isr_from_args(args, network_spec(args.seg).isr), inference=args.inference,
        depth_scale=args.depth_scale, depth_shift=args.depth_shift, frame_budget_ms=args.frame_budget_ms)


def process_options(args: argparse.Namespace) -> ProcessOptions:
    return ProcessOptions(fov_deg=args.fov, cloud_stride=args.cloud_stride,
                          min_depth=args.min_depth, max_depth=args.max_depth)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("input", metavar="INPUT",
                        help="image, folder of images, video, or a recording: rosbag2 (folder, "
                        ".mcap or .db3 file) or ROS 1 .bag")
    parser.add_argument("--out", required=True, metavar="OUT",
                        help="output, exactly this path: a new rosbag2 folder, a new .mcap/.db3 "
                        "file, or a new/empty folder for --format files")
    parser.add_argument("--format", default=None, metavar="FORMAT",
                        help="mcap (default; sqlite3 for an OUT ending in .db3) or sqlite3: a "
                        "rosbag2; files: per-frame PNG, NPY and PLY; or a comma list of png,npy,ply")
    parser.add_argument("--compression", default=None, choices=COMPRESSIONS,
                        help="MCAP chunk compression (default zstd; sqlite3 bags are uncompressed)")
    source = parser.add_argument_group("input")
    source.add_argument("--topic", default=None,
                        help="image topic of a recording (Image or CompressedImage; default: the "
                        "only one); only the topics read need message definitions rosbags parses")
    source.add_argument("--camera-info-topic", default=None,
                        help="rosbag2 CameraInfo topic (default: camera_info beside --topic)")
    source.add_argument("--every", type=int, default=1, metavar="N",
                        help="process every N-th input frame (default 1)")
    source.add_argument("--max-frames", type=int, default=None, metavar="N",
                        help="stop after N input frames")
    source.add_argument("--fps", type=float, default=None,
                        help=f"stamping rate of image folders (default {DEFAULT_FPS:g}) and of "
                        "videos that state none")
    source.add_argument("--frame-id", default=DEFAULT_FRAME_ID,
                        help=f"frame_id for images and videos (default {DEFAULT_FRAME_ID!r})")
    source.add_argument("--max-input-pixels", type=int, default=DEFAULT_MAX_INPUT_PIXELS, metavar="N",
                        help="largest input frame, width x height (default "
                        f"{DEFAULT_MAX_INPUT_PIXELS:,}, the ROS nodes' max_input_pixels); larger "
                        "frames are skipped before they are decoded")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_arguments(parser, depth_default=DEFAULT_DEPTH_NETWORK, seg_default=DEFAULT_SEG_NETWORK)


def output_format(out: Path, fmt: str | None) -> str:
    """``--format`` made explicit: a bag storage (from OUT's suffix when not given) or a files list."""
    if fmt is not None and fmt not in BAG_FORMATS:
        parse_file_kinds(fmt)  # ValueError naming the choices
        return fmt
    return bag_storage_for(out, fmt)


def check_output(out: Path, fmt: str) -> None:
    """``ValueError`` for an output that would overwrite something, :class:`OutputError` for a
    folder that cannot be written (checked by staging an empty output there and removing it)."""
    from ..atomic import StagedOutput

    if fmt in BAG_FORMATS:
        if out.exists() or out.is_symlink():
            raise ValueError(f"{out}: exists already; a bag is written to a new path")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: exists already and is not an empty folder")
    try:
        StagedOutput(out).discard()
    except OSError as exc:
        raise OutputError(f"{out}: cannot write here: {exc.strerror or exc}") from None


def make_writer(out: Path, fmt: str, notes: dict[str, str],
                compression: str | None = None) -> BagWriter | FilesWriter:
    """The writer for ``--format`` (explicit, see :func:`output_format`); ``notes`` go into the bag's
    metadata or ``run.json``."""
    check_output(out, fmt)
    if fmt in BAG_FORMATS:
        return BagWriter(out, fmt, custom_data=notes, compression=compression)
    if compression is not None:
        raise ValueError("--compression applies to MCAP output")
    return FilesWriter(out, parse_file_kinds(fmt), notes=notes)


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    fmt = output_format(out, args.format)
    if args.max_input_pixels < 1:
        raise ValueError(f"--max-input-pixels must be at least 1, got {args.max_input_pixels}")
    check_output(out, fmt)  # fail before the networks are built
    source = open_source(args.input, topic=args.topic, camera_info_topic=args.camera_info_topic,
                         every=args.every, fps=args.fps, frame_id=args.frame_id,
                         max_pixels=args.max_input_pixels)
    models = load_models(model_options(args))
    processor = FrameProcessor(models, process_options(args))
    for note in models.notes:
        print(note, file=sys.stderr)
    writer = make_writer(out, fmt, {}, args.compression)
    try:
        summary = run_frames(source, writer, processor, max_frames=args.max_frames,
                             progress=not args.no_progress)
    except OutputError as exc:
        print(f"dense-perception run: error: {exc}", file=sys.stderr)
        return 1
    what = fmt if fmt not in BAG_FORMATS else f"{fmt}, {writer.compression} compression"
    lines = [f"input: {source.describe()}", f"output: {out} ({what})"]
    if processor.depth_kind:
        lines.append(describe_depth(processor.depth_kind, models.depth.network))
        lines.append(f"camera: {processor.camera_source}")
    notes = processor.notes()
    lines += [f"{key.removeprefix(NOTE_PREFIX).replace('_', ' ')}: {value}"
              for key, value in notes.items() if not key.endswith(("_network", "untrained", "depth_units"))]
    lines += summary.lines()
    lines += [f"UNTRAINED weights: {name} — its outputs are meaningless" for name in models.untrained]
    print("\n".join(lines))
    if summary.interrupted:
        print(f"dense-perception run: stopped by {summary.signal or 'SIGINT'}; {out} holds the "
              f"{summary.written} finished frames", file=sys.stderr)
        return 128 + int(getattr(signal, summary.signal or "SIGINT"))
    if summary.written == 0:
        print(f"dense-perception run: error: no frame of {args.input} could be processed",
              file=sys.stderr)
        return 1
    return 0
