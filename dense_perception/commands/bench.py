"""``dense-perception bench``: latency, throughput, memory and MACs per network, backend and ISR setting,
side by side with what a user would run instead (plain eager fp32; ``transformers``' DPT)."""
from __future__ import annotations

import argparse
import json
import math
import platform
from pathlib import Path

import torch

from ..benchmark import BACKENDS, Case, Measurement, measure
from ..networks import ISRSetting, available_networks, network_spec

DEFAULT_NETWORKS = ("dpt_hybrid_midas", "edaformer_t_ade20k")
DEFAULT_SIZES = {"dpt": (384, 384), "edaformer": (512, 512)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--networks", nargs="+", default=list(DEFAULT_NETWORKS), choices=available_networks(),
                        metavar="NAME", help=f"networks to measure (default: {' '.join(DEFAULT_NETWORKS)})")
    parser.add_argument("--backends", nargs="+", default=["eager", "torch", "onnxruntime", "transformers"],
                        choices=BACKENDS, help="backends; 'eager' is the baseline, 'transformers' DPT only")
    parser.add_argument("--isr", nargs="+", default=["[8,4,2,1]-[1,2,4]", "[16,8,2,1]-[2,4,8]",
                                                     "[16,8,4,2]-[2,4,8]"],
                        help="EDAFormer ISR settings (paper notation or a ratio), the first is the baseline")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="network input size (default: 384 384 for DPT, 512 512 for EDAFormer)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--runs", type=int, default=10, help="timed runs per case (after warm-up)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4, help="batch size of the throughput figure (1 = skip)")
    parser.add_argument("--end-to-end", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="time image -> result on an HxW camera frame (pre-processing, network, "
                             "post-processing) instead of the bare network; DPT with eager/torch/transformers")
    parser.add_argument("--out", default="bench/out", help="folder for results.json and results.png")


def _cases(args: argparse.Namespace) -> list[Case]:
    cases = []
    for name in args.networks:
        spec = network_spec(name)
        height, width = args.size or DEFAULT_SIZES[spec.family]
        settings = [str(ISRSetting.parse(s)) for s in args.isr] if spec.family == "edaformer" else [None]
        for backend in args.backends:
            if backend == "transformers" and spec.family != "dpt":
                continue
            if args.end_to_end and (spec.family != "dpt" or backend not in ("eager", "torch", "transformers")):
                continue
            for isr in settings:
                cases.append(Case(name, backend, height, width, isr, args.batch, args.device, args.threads,
                                  tuple(args.end_to_end) if args.end_to_end else None))
    return cases


def _fmt(value: float, spec: str = ".1f") -> str:
    return "–" if math.isnan(value) else format(value, spec)


def table(results: list[Measurement]) -> str:
    """Markdown table; the ratio is frames per second relative to eager fp32 at the first ISR setting."""
    baseline: dict[tuple[str, int, int], float] = {}
    for m in results:
        key = (m.case.network, m.case.height, m.case.width)
        if m.case.backend == "eager" and key not in baseline and not m.error:
            baseline[key] = m.fps
    head = ("| network | size | backend | ISR | p50 ms | p90 ms | fps (batch 1) | images/s (batch {b}) "
            "| peak MiB | GMACs | × eager baseline |").format(b=results[0].case.batch if results else 1)
    lines = [head, "|" + "---|" * 11]
    for m in results:
        c = m.case
        ratio = m.fps / baseline.get((c.network, c.height, c.width), float("nan"))
        size = f"{c.end_to_end[0]}x{c.end_to_end[1]} image" if c.end_to_end else f"{c.height}x{c.width}"
        if m.error:
            lines.append(f"| {c.network} | {size} | {c.backend} | {c.isr or '–'} "
                         f"| failed: {m.error} |||||||")
            continue
        lines.append(f"| {c.network} | {size} | {c.backend} | {c.isr or '–'} | {_fmt(m.p50)} "
                     f"| {_fmt(m.p90)} | {_fmt(m.fps, '.2f')} | {_fmt(m.throughput, '.2f')} | {_fmt(m.peak_mib, '.0f')} "
                     f"| {_fmt(m.gmacs, '.2f')} | {_fmt(ratio, '.2f')} |")
    return "\n".join(lines)


def plot(results: list[Measurement], path: Path) -> bool:
    """A bar chart of frames per second per case (matplotlib, when installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ok = [m for m in results if not m.error]
    labels = [f"{m.case.network}\n{m.case.backend} {m.case.isr or ''}" for m in ok]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(ok)), 4.5))
    ax.bar(range(len(ok)), [m.fps for m in ok], color="tab:blue")
    ax.set_xticks(range(len(ok)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("frames per second (batch 1)")
    ax.set_title(f"dense-perception bench ({ok[0].case.device if ok else ''})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(args: argparse.Namespace) -> int:
    cases = _cases(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"# dense-perception bench: torch {torch.__version__}, device {args.device}, {args.threads} threads, "
          f"{platform.machine()}, warm-up {args.warmup}, {args.runs} timed runs; {len(cases)} cases", flush=True)
    results = []
    for i, case in enumerate(cases, 1):
        print(f"[{i}/{len(cases)}] {case.network} {case.backend} {case.isr or ''} ...", flush=True)
        results.append(measure(case, args.warmup, args.runs))
        if results[-1].error:
            print(f"    failed: {results[-1].error}", flush=True)
    print(table(results))
    (out / "results.json").write_text(json.dumps([m.to_json() for m in results], indent=2))
    plotted = plot(results, out / "results.png")
    print(f"wrote {out / 'results.json'}" + (f" and {out / 'results.png'}" if plotted else
                                            " (install matplotlib for results.png)"))
    return 1 if all(m.error for m in results) else 0
