"""Official segmentation labels: the literal path (two full bilinear resizes, then argmax), this package's
(``pipeline/official_labels.py``) and the ``fast`` label mode -- time and peak memory per image size, with
EDAFormer-T's network time at the same inputs measured in the same run.

    python bench/bench_official_labels.py [--sizes 640x480 1280x720 1920x1080 4000x3000] [--runs 15]
                                          [--threads 2] [--json FILE]

The logits are EDAFormer-T's (torch engine, untrained seeded weights, as every table of bench/RESULTS.md)
on the bundled sample photograph resized to each size, at the Segmenter's default network size for it
(ADE20K keep-aspect; 512x704 for 640x480, logits [1, 150, 64, 88]). Each label measurement runs in a
fresh subprocess: the median time of ``--runs`` calls after two warm-ups, and the peak resident memory
above what the process held before the first timed call (the labels it returns included).
A benchmark, not a test: it prints a table (and --json FILE writes the same numbers).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's package, not another installed one
METHODS = ("literal", "official", "fast")


def _resident_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _labels_call(method: str, logits: torch.Tensor, network: tuple[int, int], image: tuple[int, int]):
    from dense_perception.pipeline.postprocess import labels_from_logits, resize_logits

    if method == "literal":
        return lambda: resize_logits(logits, network, image).argmax(1)[0].to(torch.uint8).numpy()
    return lambda: labels_from_logits(logits, network, image, method)[0]


def measure_child(path: str, method: str, runs: int, threads: int) -> dict:
    """One method on one size's logits (in its own process): median ms and peak extra MiB."""
    torch.set_num_threads(threads)
    saved = torch.load(path)
    call = _labels_call(method, saved["logits"], tuple(saved["network"]), tuple(saved["image"]))
    before = _resident_kb("VmRSS:")
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark starts again here
    times = []
    for index in range(runs + 2):
        started = time.perf_counter()
        labels = call()
        if index >= 2:
            times.append((time.perf_counter() - started) * 1e3)
        del labels
    return {"median_ms": statistics.median(times), "min_ms": min(times),
            "peak_mib": (_resident_kb("VmHWM:") - before) / 1024}


def network_logits(segmenter, image: np.ndarray, runs: int) -> tuple[torch.Tensor, tuple[int, int], float]:
    """The network's logits for ``image``, its input size and its median time (ms) at that size."""
    prepared = segmenter.preprocess(image)
    engine = segmenter.engine_for(prepared.network_size)
    times = []
    for index in range(runs + 1):
        started = time.perf_counter()
        logits = engine.infer(prepared.tensor)
        if index:
            times.append((time.perf_counter() - started) * 1e3)
    return logits.float(), prepared.network_size, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["640x480", "1280x720", "1920x1080", "4000x3000"])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--network-runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--child", nargs=3, metavar=("LOGITS", "METHOD", "RUNS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_child(args.child[0], args.child[1], int(args.child[2]), args.threads)))
        return

    from PIL import Image

    from dense_perception.api import Segmenter
    from dense_perception.io.sources import sample_image

    torch.set_num_threads(args.threads)
    segmenter = Segmenter("edaformer_t_ade20k", backend="torch")
    with sample_image() as sample:
        photo = Image.open(sample).convert("RGB")
    rows = []
    print(f"EDAFormer-T (torch, untrained seeded weights), {args.threads} threads, torch {torch.__version__}; "
          f"labels: median of {args.runs} calls, peak = resident memory above the process's before the calls")
    print("| image | network input | logits | network ms | literal ms | literal peak MiB | ours ms "
          "| ours peak MiB | fast ms | fast peak MiB | ours / network | literal / ours |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as workdir:
        for size in args.sizes:
            width, height = (int(v) for v in size.split("x"))
            image = np.asarray(photo.resize((width, height)))
            logits, network, network_ms = network_logits(segmenter, image, args.network_runs)
            path = str(Path(workdir) / f"{size}.pt")
            torch.save({"logits": logits, "network": network, "image": (height, width)}, path)
            row = {"image": size, "network": f"{network[1]}x{network[0]}", "logits": list(logits.shape),
                   "network_ms": network_ms}
            for method in METHODS:
                runs = args.runs if method != "literal" or width * height < 5_000_000 else max(3, args.runs // 5)
                out = subprocess.run(
                    [sys.executable, __file__, "--threads", str(args.threads), "--child", path, method, str(runs)],
                    capture_output=True, text=True, check=True, cwd=REPO)
                row[method] = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"| {size} | {row['network']} | {'x'.join(map(str, row['logits']))} | {network_ms:.0f} "
                  f"| {row['literal']['median_ms']:.1f} | {row['literal']['peak_mib']:.0f} "
                  f"| {row['official']['median_ms']:.1f} | {row['official']['peak_mib']:.0f} "
                  f"| {row['fast']['median_ms']:.1f} | {row['fast']['peak_mib']:.0f} "
                  f"| {row['official']['median_ms'] / network_ms:.1%} "
                  f"| {row['literal']['median_ms'] / row['official']['median_ms']:.0f}x |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
