"""``dense-perception run INPUT --out OUT``: depth, labels and semantic clouds for recorded input.

INPUT: an image, a folder of images, a video (anything OpenCV opens), or a rosbag2 (MCAP or
sqlite3; ``--topic`` picks the image topic, recorded camera_info is used). OUT: a rosbag2 with the
ROS nodes' topics and message types (``--format mcap``, the default, or ``sqlite3``), or per-frame
files (``--format files``, or a comma list of ``png,npy,ply``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..defaults import DEFAULT_DEPTH_NETWORK, DEFAULT_SEG_NETWORK
from ..engines.base import PRECISIONS
from ..io.sources import DEFAULT_FPS, DEFAULT_FRAME_ID, open_source
from ..io.writers import BAG_FORMATS, BagWriter, FilesWriter, parse_file_kinds
from ..networks import available_networks
from ..runner import (DEFAULT_FOV_DEG, FrameProcessor, ModelOptions, ProcessOptions, describe_depth,
                      load_models, run_frames)
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

Ctrl-C stops after the current frame (twice: at once); the output is closed and valid either way.
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
    add_isr_arguments(parser)
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
        isr=isr_from_args(args), depth_scale=args.depth_scale, depth_shift=args.depth_shift)


def process_options(args: argparse.Namespace) -> ProcessOptions:
    return ProcessOptions(fov_deg=args.fov, cloud_stride=args.cloud_stride,
                          min_depth=args.min_depth, max_depth=args.max_depth)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("input", metavar="INPUT",
                        help="image, folder of images, video, or rosbag2 (folder, .mcap or .db3)")
    parser.add_argument("--out", required=True, metavar="OUT",
                        help="output: a new rosbag2 folder, or a new/empty folder for --format files")
    parser.add_argument("--format", default="mcap", metavar="FORMAT",
                        help="mcap (default) or sqlite3: a rosbag2; files: per-frame PNG, NPY and "
                        "PLY; or a comma list of png,npy,ply")
    source = parser.add_argument_group("input")
    source.add_argument("--topic", default=None,
                        help="rosbag2 image topic (Image or CompressedImage; default: the only one)")
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
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_arguments(parser, depth_default=DEFAULT_DEPTH_NETWORK, seg_default=DEFAULT_SEG_NETWORK)


def check_output(out: Path, fmt: str) -> None:
    """``ValueError`` for an unknown ``--format`` or an output that would overwrite something."""
    if fmt in BAG_FORMATS:
        if out.exists():
            raise ValueError(f"{out}: exists already; a bag is written to a new folder")
        return
    parse_file_kinds(fmt)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: exists already and is not an empty folder")


def make_writer(out: Path, fmt: str, notes: dict[str, str]) -> BagWriter | FilesWriter:
    """The writer for ``--format``; ``notes`` go into the bag's metadata or ``run.json``."""
    check_output(out, fmt)
    if fmt in BAG_FORMATS:
        return BagWriter(out, fmt, custom_data=notes)
    return FilesWriter(out, parse_file_kinds(fmt), notes=notes)


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    check_output(out, args.format)  # fail before the networks are built
    source = open_source(args.input, topic=args.topic, camera_info_topic=args.camera_info_topic,
                         every=args.every, fps=args.fps, frame_id=args.frame_id)
    models = load_models(model_options(args))
    processor = FrameProcessor(models, process_options(args))
    for note in models.notes:
        print(note, file=sys.stderr)
    notes = {"dense_perception.depth_network": models.depth.network,
             "dense_perception.seg_network": models.seg.network,
             "dense_perception.untrained": ",".join(models.untrained) or "none"}
    writer = make_writer(out, args.format, notes)
    summary = run_frames(source, writer, processor, max_frames=args.max_frames,
                         progress=not args.no_progress)
    lines = [f"input: {source.describe()}", f"output: {out} ({args.format})"]
    if processor.depth_kind:
        lines.append(describe_depth(processor.depth_kind, models.depth.network))
        lines.append(f"camera: {processor.camera_source}")
    lines += summary.lines()
    lines += [f"UNTRAINED weights: {name} — its outputs are meaningless" for name in models.untrained]
    print("\n".join(lines))
    if summary.interrupted:
        return 130
    if summary.written == 0:
        print(f"dense-perception run: error: no frame of {args.input} could be processed",
              file=sys.stderr)
        return 1
    return 0
