"""``dense-perception demo``: depth, labels, a semantic cloud and a bag of a bundled sample image.

Writes into a new folder (``--out``, default ``dense-perception-demo`` in the current folder, with a
number appended when that exists) and names it:

* ``depth.png`` — coloured depth; ``labels_overlay.png`` — the labels' colours over the image;
* ``summary.png`` — input, depth and overlay side by side, with the most frequent classes;
* ``cloud.ply`` — the semantic point cloud (colour, and the class id as property ``label``);
* ``rosbag2_demo/`` — a rosbag2 (MCAP) with the ROS nodes' topics and message types: open
  ``rosbag2_demo/rosbag2_demo.mcap`` in Foxglove, or ``ros2 bag play --loop rosbag2_demo`` and RViz;
* ``README.txt`` — what ran, with which weights, and these notes.

The default depth network is the metric ``dpt_hybrid_nyu`` (the sample is an indoor scene), so the
cloud is in metres; MiDaS networks give relative depth and no cloud (see ``run --help``).
Checkpoints: ``--depth-checkpoint``/``--seg-checkpoint``, else the official files under ``models/``,
else a download when the network allows; otherwise the demo says how to get them and runs with
untrained weights, and every output says UNTRAINED.
"""
from __future__ import annotations

import argparse
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np

from ..defaults import DEFAULT_DEPTH_NETWORK, DEFAULT_SEG_NETWORK
from ..io.sources import DEFAULT_FRAME_ID, open_source, sample_image
from ..io.writers import BagWriter, FrameOutputs, write_png, write_ply
from ..runner import FrameProcessor, describe_depth, load_models, run_frames, stamp_untrained
from .run import add_model_arguments, model_options, process_options

DEFAULT_OUT = "dense-perception-demo"
BAG_NAME = "rosbag2_demo"
#: Classes listed in the summary image.
LEGEND_CLASSES = 6


def fresh_folder(base: Path) -> Path:
    """``base`` if it does not exist, else the first free ``base-1``, ``base-2``, ..."""
    if not base.exists():
        return base
    number = 1
    while base.with_name(f"{base.name}-{number}").exists():
        number += 1
    return base.with_name(f"{base.name}-{number}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ("writes depth.png, labels_overlay.png, summary.png, cloud.ply and a rosbag2 "
                     f"(MCAP) {BAG_NAME}/ into a new folder;\nwithout checkpoints it says how to get "
                     "them and runs UNTRAINED (every output says so). See `run --help` for units.")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help=f"new output folder (default: ./{DEFAULT_OUT}, numbered if it exists)")
    parser.add_argument("--image", default=None, metavar="FILE",
                        help="use this image instead of the bundled sample")
    add_model_arguments(parser, depth_default=DEFAULT_DEPTH_NETWORK, seg_default=DEFAULT_SEG_NETWORK)


def _caption(image: np.ndarray, text: str, color: tuple[int, int, int] = (40, 40, 40)) -> np.ndarray:
    """``image`` with a text bar of ``color`` above it (RGB uint8)."""
    import cv2

    width = image.shape[1]
    scale = max(0.3, min(0.8, width / 500.0))
    bar = np.full((int(34 * scale) + 6, width, 3), color, dtype=np.uint8)
    cv2.putText(bar, text, (4, bar.shape[0] - 8), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                1, cv2.LINE_AA)
    return np.concatenate([bar, image], axis=0)


def _legend(labels: np.ndarray, names: Sequence[str], palette: np.ndarray, width: int) -> np.ndarray:
    """A strip listing the most frequent classes with their colours and share of the pixels."""
    import cv2

    ids, counts = np.unique(labels, return_counts=True)
    order = np.argsort(counts)[::-1][:LEGEND_CLASSES]
    row_height = 22
    strip = np.full((row_height * max(1, len(order)) + 8, width, 3), 255, dtype=np.uint8)
    for row, position in enumerate(order):
        class_id, share = int(ids[position]), counts[position] / labels.size
        top = 4 + row * row_height
        if class_id < len(palette):
            strip[top + 3:top + row_height - 3, 6:26] = palette[class_id]
        name = names[class_id].strip() if class_id < len(names) else f"id {class_id}"
        cv2.putText(strip, f"{name} ({class_id}): {share:.0%}", (34, top + row_height - 6),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def summary_image(outputs: FrameOutputs, depth_name: str, seg_name: str, names: Sequence[str],
                  palette: np.ndarray, untrained: Sequence[str]) -> np.ndarray:
    """Input | coloured depth | label overlay, captioned, with a class legend (RGB uint8)."""
    panels = [_caption(outputs.frame.rgb, "input"),
              _caption(outputs.depth_colored, f"depth: {depth_name}"),
              _caption(outputs.seg_colored, f"labels: {seg_name}")]
    row = np.concatenate(panels, axis=1)
    parts = [row, _legend(outputs.labels, names, palette, row.shape[1])]
    if untrained:
        banner = np.zeros((48, row.shape[1], 3), dtype=np.uint8)
        parts.insert(0, stamp_untrained(banner, "UNTRAINED WEIGHTS: " + ", ".join(untrained)))
    return np.concatenate(parts, axis=0)


class DemoWriter:
    """Writes the demo's files and bag for the (single) frame it is given."""

    def __init__(self, folder: Path, bag: BagWriter, depth_name: str, seg_name: str,
                 names: Sequence[str], palette: np.ndarray, untrained: Sequence[str]) -> None:
        self.path = folder
        self.bag = bag
        self.depth_name, self.seg_name = depth_name, seg_name
        self.names, self.palette, self.untrained = names, palette, list(untrained)
        self.points = 0

    def __enter__(self) -> DemoWriter:
        self.bag.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.bag.__exit__(exc_type, exc, tb)

    def annotate(self, notes: Mapping[str, str]) -> None:
        self.bag.annotate(notes)

    def counts(self) -> dict[str, int]:
        return self.bag.counts()

    def write(self, outputs: FrameOutputs) -> None:
        write_png(self.path / "depth.png", outputs.depth_colored)
        write_png(self.path / "labels_overlay.png", outputs.seg_colored)
        write_png(self.path / "summary.png", summary_image(
            outputs, self.depth_name, self.seg_name, self.names, self.palette, self.untrained))
        if outputs.make_cloud is not None:
            comments = [f"dense_perception demo: depth {self.depth_name}, labels {self.seg_name}",
                        "frame: camera optical frame (x right, y down, z forward), metres",
                        "label: class id (65535 = none)"]
            comments += [f"UNTRAINED weights: {name}" for name in self.untrained]
            self.points = write_ply(self.path / "cloud.ply", outputs.make_cloud(), comments)
        self.bag.write(outputs)


def main(args: argparse.Namespace) -> int:
    if args.out is not None:
        folder = Path(args.out)
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise ValueError(f"{folder}: exists already and is not an empty folder")
    else:
        folder = fresh_folder(Path(DEFAULT_OUT))
    if args.image is not None:
        return _run_demo(args, folder, Path(args.image))
    with sample_image() as sample:
        return _run_demo(args, folder, sample)


def _run_demo(args: argparse.Namespace, folder: Path, image: Path) -> int:
    source = open_source(image)
    models = load_models(model_options(args))
    processor = FrameProcessor(models, process_options(args))
    folder.mkdir(parents=True, exist_ok=True)
    untrained = models.untrained
    bag = BagWriter(folder / BAG_NAME, "mcap", custom_data={
        "dense_perception.demo": "1", "dense_perception.untrained": ",".join(untrained) or "none"})
    writer = DemoWriter(folder, bag, models.depth.network, models.seg.network,
                        models.seg.class_names, models.seg.palette, untrained)
    summary = run_frames(source, writer, processor, progress=False)
    lines = [f"dense-perception demo: wrote {folder}/",
             "  depth.png            coloured depth (near = dark blue)",
             "  labels_overlay.png   class colours over the image",
             "  summary.png          input | depth | labels, with the main classes",
             f"  cloud.ply            {writer.points} points (x y z, red green blue, label)"
             if writer.points else "  (no cloud.ply: the depth is not metric)",
             f"  {BAG_NAME}/        rosbag2 (MCAP): Foxglove opens {BAG_NAME}/{BAG_NAME}.mcap; "
             f"`ros2 bag play --loop {folder}/{BAG_NAME}` feeds RViz (fixed frame: "
             f"{DEFAULT_FRAME_ID})",
             f"input: {source.describe()}"]
    if processor.depth_kind:
        lines += [describe_depth(processor.depth_kind, models.depth.network),
                  f"camera: {processor.camera_source}"]
    lines += models.notes
    if untrained:
        lines.append("UNTRAINED weights: " + ", ".join(untrained) + " — the pictures show the "
                     "pipeline working, not real depth or classes; every output says UNTRAINED")
    lines += summary.lines()[1:]  # counts matter little for one frame; keep skips/interruption
    (folder / "README.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    if summary.interrupted:
        return 128 + int(getattr(signal, summary.signal or "SIGINT"))
    return 0 if summary.written else 1
