"""Peak memory of ``dense-perception run`` on one large photograph, stage by stage.

    python bench/bench_offline_memory.py IMAGE [--label-mode official|fast] [--out OUT.mcap]

A benchmark, not a test. It runs the ``run`` pipeline's own pieces (source, models at their default
network sizes, :class:`~dense_perception.runner.FrameProcessor`, the MCAP writer) on one frame and
prints the process's peak resident memory (``ru_maxrss``) after each stage, so the stage that sets the
peak shows: the peak can only grow, and a stage that does not raise it stayed under the earlier peak.
``--label-mode fast`` (argmax at network resolution, nearest-neighbour labels) shows what the official
label resize (bilinear K x H x W logits, then argmax) costs. Untrained weights: a checkpoint's cost is
the same.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from dense_perception.io.sources import open_source
from dense_perception.io.writers import BagWriter
from dense_perception.pipeline import postprocess
from dense_perception.runner import FrameProcessor, ModelOptions, load_models


def peak_mib() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", type=Path)
    parser.add_argument("--label-mode", default="official", choices=("official", "fast"))
    parser.add_argument("--out", type=Path, default=None, help="MCAP to write (default: a temporary one)")
    args = parser.parse_args()
    rows = [("start", peak_mib(), 0.0)]

    def stage(name: str, start: float) -> None:
        rows.append((name, peak_mib(), time.perf_counter() - start))

    t = time.perf_counter()
    source = open_source(args.image)
    frame = next(iter(source.frames()))
    stage(f"decode {frame.rgb.shape[1]}x{frame.rgb.shape[0]}", t)
    t = time.perf_counter()
    models = load_models(ModelOptions(search=False, download=False))
    models.seg.label_mode = postprocess.LabelMode(args.label_mode)
    stage("build networks", t)
    processor = FrameProcessor(models)
    t = time.perf_counter()
    models.depth.predict(frame.rgb)
    stage("depth (pre-process, network, resize to the image)", t)
    t = time.perf_counter()
    models.seg.predict(frame.rgb)
    stage(f"labels ({args.label_mode} label mode)", t)
    t = time.perf_counter()
    outputs = processor.process(frame)
    stage("whole frame again (views)", t)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "out.mcap"
        t = time.perf_counter()
        with BagWriter(out) as writer:
            writer.write(outputs)
        stage(f"write MCAP ({out.stat().st_size / 1e6:.0f} MB)", t)
    print("| stage | peak RSS so far (MiB) | seconds |\n|---|---|---|")
    for name, peak, seconds in rows:
        print(f"| {name} | {peak:.0f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
