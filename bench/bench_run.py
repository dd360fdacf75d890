"""Is I/O the bottleneck of ``dense-perception run``? Its frame rate on a 640×480 video against the bare
inference rate of the same models and backend on the same frames (already decoded, nothing written).

    python bench/bench_run.py [--frames 12] [--backend torch] [--input-size 256 320]

A benchmark, not a test: it prints both rates and their ratio (target: run ≥ 0.9 × bare).
``run`` decodes the video, runs depth + segmentation, builds clouds and colour views, and writes an
MCAP bag; "bare" is ``DepthEstimator.predict`` + ``Segmenter.predict`` only. Untrained weights: the
cost of a real checkpoint is the same.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import re
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from dense_perception.api import DepthEstimator, Segmenter
from dense_perception.cli import main as cli_main


def make_video(path: Path, frames: int, height: int = 480, width: int = 640) -> list[np.ndarray]:
    """A moving-gradient test video; returns its frames as RGB as OpenCV decodes them."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (width, height))
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(frames):
        bgr = np.stack([(xx + 8 * i) % 256, (yy + 4 * i) % 256, ((xx + yy) // 4) % 256], -1).astype(np.uint8)
        writer.write(bgr)
    writer.release()
    capture = cv2.VideoCapture(str(path))
    decoded = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        decoded.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return decoded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--input-size", type=int, nargs=2, default=(256, 320), metavar=("H", "W"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = tuple(args.input_size)
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "drive.mp4"
        frames = make_video(video, args.frames)

        depth = DepthEstimator("dpt_hybrid_nyu", backend=args.backend, input_size=size)
        seg = Segmenter("edaformer_t_ade20k", backend=args.backend, input_size=size)
        depth.predict(frames[0]), seg.predict(frames[0])  # warm-up
        t0 = time.perf_counter()
        for rgb in frames:
            depth.predict(rgb)
            seg.predict(rgb)
        bare_fps = len(frames) / (time.perf_counter() - t0)

        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            code = cli_main(["run", str(video), "--out", str(Path(tmp) / "out"), "--untrained", "--no-progress",
                             "--depth", "dpt_hybrid_nyu", "--seg", "edaformer_t_ade20k",
                             "--backend", args.backend, "--input-size", *map(str, size)])
    assert code == 0, f"run exited {code}: {printed.getvalue()}"
    # run's own summary: frames written over the loop's time (decode, inference, clouds, colour views,
    # bag writing; model loading excluded, the first frame's warm-up included)
    run_fps = float(re.search(r"\(([\d.]+) frames/s\)", printed.getvalue()).group(1))
    print("| frames | network input | bare inference fps | `run` fps (its summary) | ratio |")
    print("|---|---|---|---|---|")
    print(f"| {len(frames)} x 640x480 | {size[0]}x{size[1]} | {bare_fps:.2f} | {run_fps:.2f} | "
          f"{run_fps / bare_fps:.2f} |")


if __name__ == "__main__":
    main()
