"""The frame-budget governor at work: a stream whose CPU is taken part-way through, governor off vs on.

    python bench/bench_governor.py [--frames 90] [--budget-ms 250] [--load-from 30] [--load-to 60]
                                   [--network edaformer_t_ade20k] [--plot bench/governor.png]

A benchmark, not a test. The same 640x480 stream runs twice in this process, first with the frame
budget off (the training ratios throughout), then with ``frame_budget_ms`` set; in both, competing
processes (busy loops, one per core) start at frame ``--load-from`` and stop at ``--load-to``, so the
networks lose most of the CPU in that stretch, as on a robot when planning or mapping wakes up. It
prints per-phase frame times, how many frames held the budget and which settings were served, and
draws frame time and the served setting over time, with the budget line, side by side (PNG).
Untrained weights (seed 0): the cost is that of the official checkpoint.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dense_perception.api import Segmenter


def _spin() -> None:  # pragma: no cover - runs in the competing processes
    while True:
        pass


class CompetingLoad:
    """One busy-looping process per CPU core, started and stopped on demand."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._running: list[multiprocessing.Process] = []

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._running = [context.Process(target=_spin, daemon=True) for _ in range(self.processes)]
        for process in self._running:
            process.start()

    def stop(self) -> None:
        for process in self._running:
            process.terminate()
        for process in self._running:
            process.join()
        self._running = []


@dataclass
class Trace:
    """One stream: per frame its start time (s from the stream's start), frame time (ms), setting."""

    label: str
    start_s: list[float] = field(default_factory=list)
    frame_ms: list[float] = field(default_factory=list)
    setting: list[str] = field(default_factory=list)
    rung: list[int] = field(default_factory=list)


def stream(segmenter: Segmenter, image: np.ndarray, frames: int, load: CompetingLoad,
           load_from: int, load_to: int, label: str, ladder: list[str]) -> Trace:
    trace = Trace(label)
    began = time.perf_counter()
    try:
        for index in range(frames):
            if index == load_from:
                load.start()
            if index == load_to:
                load.stop()
            start = time.perf_counter()
            result = segmenter.predict(image)
            trace.frame_ms.append(1e3 * (time.perf_counter() - start))
            trace.start_s.append(start - began)
            trace.setting.append(str(result.isr))
            if str(result.isr) not in ladder:
                ladder.append(str(result.isr))
            trace.rung.append(ladder.index(str(result.isr)))
    finally:
        load.stop()
    return trace


def phases(trace: Trace, load_from: int, load_to: int) -> list[tuple[str, slice]]:
    return [("before the load", slice(0, load_from)), ("under load", slice(load_from, load_to)),
            ("after the load", slice(load_to, len(trace.frame_ms)))]


def table(traces: list[Trace], budget_ms: float, load_from: int, load_to: int) -> str:
    rows = ["| governor | phase | frames | median frame time (ms) | within budget | settings served (frames) |",
            "|---|---|---|---|---|---|"]
    for trace in traces:
        for name, part in phases(trace, load_from, load_to):
            times = trace.frame_ms[part]
            settings = trace.setting[part]
            if not times:
                continue
            counts = {s: settings.count(s) for s in dict.fromkeys(settings)}
            held = sum(t <= budget_ms for t in times)
            rows.append(f"| {trace.label} | {name} | {len(times)} | {statistics.median(times):.0f} | "
                        f"{held}/{len(times)} ({100 * held / len(times):.0f} %) | "
                        + ", ".join(f"{s} ({n})" for s, n in counts.items()) + " |")
    return "\n".join(rows)


def plot(traces: list[Trace], budget_ms: float, load_from: int, load_to: int, ladder: list[str],
         path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(traces), figsize=(7 * len(traces), 4.5), sharey=True)
    top = max(max(t.frame_ms) for t in traces) * 1.1
    for axis, trace in zip(np.atleast_1d(axes), traces):
        t = np.asarray(trace.start_s)
        load_start, load_end = t[load_from], t[min(load_to, len(t) - 1)]
        axis.axvspan(load_start, load_end, color="0.9", label="competing load")
        axis.plot(t, trace.frame_ms, ".-", color="tab:blue", label="frame time")
        axis.axhline(budget_ms, color="tab:red", linestyle="--", label=f"budget {budget_ms:g} ms")
        axis.set_ylim(0, top)
        axis.set_xlabel("time (s)")
        axis.set_title(f"governor {trace.label}")
        served = axis.twinx()
        served.step(t, trace.rung, where="post", color="tab:green", label="setting served")
        served.set_yticks(range(len(ladder)), ladder, fontsize=7)
        served.set_ylim(-0.5, len(ladder) - 0.5)
        served.invert_yaxis()
        if axis is np.atleast_1d(axes)[0]:
            axis.set_ylabel("frame time (ms)")
            handles = axis.get_legend_handles_labels()[0] + served.get_legend_handles_labels()[0]
            axis.legend(handles=handles, loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", default="edaformer_t_ade20k")
    parser.add_argument("--frames", type=int, default=90)
    parser.add_argument("--budget-ms", type=float, default=250.0)
    parser.add_argument("--load-from", type=int, default=30)
    parser.add_argument("--load-to", type=int, default=60)
    parser.add_argument("--load-processes", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--plot", type=Path, default=Path(__file__).with_name("governor.png"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    load = CompetingLoad(args.load_processes)
    ladder: list[str] = []
    traces = []
    for label, budget in (("off", 0.0), ("on", args.budget_ms)):
        segmenter = Segmenter(args.network, backend="torch", frame_budget_ms=budget)
        for _ in range(3):  # warm-up, not recorded
            segmenter.predict(image)
        if budget:
            segmenter.set_frame_budget(0)  # the warm-up's measurements start afresh
            segmenter.set_frame_budget(budget)
        traces.append(stream(segmenter, image, args.frames, load, args.load_from, args.load_to,
                             label, ladder))
    load_avg = os.getloadavg()
    print(f"{args.network}, 640x480 frames, torch backend, {args.threads} threads, budget "
          f"{args.budget_ms:g} ms, {args.load_processes} competing busy processes from frame "
          f"{args.load_from} to {args.load_to}; load average at the end {load_avg[0]:.1f}")
    print(table(traces, args.budget_ms, args.load_from, args.load_to))
    plot(traces, args.budget_ms, args.load_from, args.load_to, ladder, args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
