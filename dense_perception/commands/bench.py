"""``dense-perception bench``: latency, throughput, memory and MACs per network, backend and ISR setting,
side by side with what a user would run instead (plain eager fp32; ``transformers``' DPT), with each
backend's deviation from eager fp32 and, for EDAFormer, each ISR setting's frame-rate gain beside its
multiply-add cut. End to end (``--end-to-end H W``), each frame's pre-processing, network and
post-processing are timed separately, per label mode for segmentation, and an ISR setting's end-to-end
gain is shown next to its network-only gain from the same frames."""
from __future__ import annotations

import argparse
import json
import math
import platform
from pathlib import Path

import torch

import numpy as np

from ..benchmark import (BACKENDS, END_TO_END_BACKENDS, FIXED_BATCH_ONE, MIXED_PRECISION_BACKENDS, STAGES, Case,
                         Measurement, deviation, measure, measure_isr, paired_ratio)
from ..networks import ISRScheme, available_networks, network_spec

DEFAULT_NETWORKS = ("dpt_hybrid_midas", "edaformer_t_ade20k")
#: Families with a Hugging Face ``transformers`` peer (the same weights in HF's implementation).
TRANSFORMERS_FAMILIES = ("dpt", "segformer")
#: Network input of the bare-network cases without --size, per task.
DEFAULT_SIZES = {"depth": (384, 384), "segmentation": (512, 512)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--networks", nargs="+", default=list(DEFAULT_NETWORKS), choices=available_networks(),
                        metavar="NAME", help=f"networks to measure (default: {' '.join(DEFAULT_NETWORKS)})")
    parser.add_argument("--backends", nargs="+", default=["eager", "torch", "onnxruntime", "transformers"],
                        choices=BACKENDS,
                        help="backends; 'eager' is the baseline, 'transformers' DPT and SegFormer only")
    parser.add_argument("--isr", nargs="+", default=None,
                        help="ISR settings (paper notation or a ratio), the first is the baseline; settings a "
                        "network cannot express are left out for it (default per network: training, the "
                        "paper's setting, ratio 2 -- EDAFormer [8,4,2,1]-[1,2,4] [16,8,2,1]-[2,4,8] "
                        "[16,8,4,2]-[2,4,8], SegFormer [8,4,2,1] [16,8,2,1] [16,8,4,1])")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="network input size (default: 384 384 for depth, 512 512 for segmentation)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=("fp32", "fp16", "bf16"),
                        help="precisions of the torch, torch-compile and transformers backends (fp16/bf16 under "
                             "autocast, CUDA); the other backends run fp32")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--runs", type=int, default=10,
                        help="timed runs per case in all, spread over the rounds (after warm-up)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="run the case list this many times, interleaved, and pool each case's timings "
                        "(robust to a machine whose speed drifts; default 3)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4, help="batch size of the throughput figure (1 = skip)")
    parser.add_argument("--end-to-end", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="time image -> result on an HxW camera frame (the bundled photograph, resized) "
                             "instead of the bare network, pre-processing, network and post-processing "
                             f"separately; {'/'.join(END_TO_END_BACKENDS)} (transformers: DPT and SegFormer, "
                             "with its own image processor); ours at the network's official input size "
                             "(whole-image), or at --size when given")
    parser.add_argument("--label-modes", nargs="+", default=["official"], choices=("official", "fast"),
                        help="segmentation end to end: the Segmenter's label modes to time (default: official)")
    parser.add_argument("--out", default="bench/out", help="folder for results.json and results.png")


def _isr_texts(name: str, scheme: ISRScheme | None, asked: list[str] | None) -> list[str | None]:
    """The ISR settings ``asked`` (ratios or lists) that network ``name``'s ``scheme`` can express, as
    text (the others are left out with a line saying why); None (no setting) for networks without ISR
    and for an adaptive training grid."""
    if scheme is None:
        return [None]
    if asked is None:
        defaults = (scheme.training, scheme.paper_setting(), scheme.from_ratio(2))
        return list(dict.fromkeys(None if setting is None else str(setting) for setting in defaults))
    texts: list[str | None] = []
    for text in asked:
        try:
            setting = scheme.parse(text)
        except ValueError as error:
            print(f"[skipped] {name} ISR {text}: {error}", flush=True)
            continue
        texts.append(None if setting is None else str(setting))
    if not texts:
        raise ValueError(f"{name}: none of the ISR settings {asked} runs on it")
    return list(dict.fromkeys(texts))


def _cases(args: argparse.Namespace) -> list[Case]:
    cases = []
    for name in args.networks:
        spec = network_spec(name)
        height, width = args.size or DEFAULT_SIZES[spec.task]
        settings = _isr_texts(name, spec.isr, args.isr)
        for backend in args.backends:
            if backend == "transformers" and spec.family not in TRANSFORMERS_FAMILIES:
                continue
            if args.end_to_end and backend not in END_TO_END_BACKENDS:
                continue
            precisions = args.precisions if backend in MIXED_PRECISION_BACKENDS else ["fp32"]
            # transformers has no ISR and its own post-processing: the training ratios (its rows compare
            # with ours at those), one label mode
            training = None if spec.isr is None or spec.isr.training is None else str(spec.isr.training)
            segments_end_to_end = args.end_to_end and spec.task == "segmentation" and backend != "transformers"
            modes = args.label_modes if segments_end_to_end else ["official"]
            for precision in precisions:
                for mode in modes:
                    for isr in ([training] if backend == "transformers" else settings):
                        cases.append(Case(name, backend, height, width, isr, args.batch, args.device, args.threads,
                                          tuple(args.end_to_end) if args.end_to_end else None,
                                          fixed_input=bool(args.end_to_end and args.size), precision=precision,
                                          label_mode=mode))
    return cases


def _fmt(value: float, spec: str = ".1f") -> str:
    return "–" if math.isnan(value) else format(value, spec)


def _isr_columns(m: Measurement, baselines: dict[Case, Measurement]) -> tuple[str, str]:
    """Frame-rate gain over the first ISR setting on the same backend, and the multiply-add cut. The
    gain comes from the interleaved timings when they were taken: the median over turns of each turn's
    time ratio (the two forwards of a turn ran back to back, so drift between turns cancels); else from
    the cases' own rounds."""
    c = m.case
    first = baselines.get(c.isr_group)
    if not c.isr or first is None or first is m:
        return "–", "–"
    gain = isr_gain(m, first)
    cut = 1 - m.gmacs / first.gmacs
    verdict = "≥ cut" if gain >= cut else "< cut"
    return f"{gain:+.0%} ({verdict})", f"−{cut:.1%}"


def isr_gain(m: Measurement, first: Measurement, stage: str | None = None) -> float:
    """Frame-rate gain of ``m`` over ``first`` (the first ISR setting of the same group): whole frames, or
    one stage of end-to-end frames. From the interleaved timings when taken -- the median over turns of
    each turn's time ratio -- else from the cases' own rounds."""
    mine, theirs = m.interleaved(stage), first.interleaved(stage)
    if mine and len(mine) == len(theirs):
        return paired_ratio(theirs, mine) - 1
    if stage is None:
        return m.fps / first.fps - 1
    return first.stage_p50(stage) / m.stage_p50(stage) - 1


def stream_gain(m: Measurement, first: Measurement, stage: str | None = None) -> float | None:
    """Frame-rate gain of ``m`` over ``first`` as a stream sees it -- the ratio of their total times over
    the same interleaved turns -- for whole frames or one stage; None without interleaved frames. The
    end-to-end gain and the network-only gain then come from the same frames and the same statistic, so
    the network's timing noise, most of a frame's, is shared by both and cancels in their ratio (a median
    of per-turn ratios picks different turns for the two)."""
    mine, theirs = m.interleaved(stage), first.interleaved(stage)
    if not mine or len(mine) != len(theirs):
        return None
    return sum(theirs) / sum(mine) - 1


def stage_table(results: list[Measurement]) -> str:
    """Markdown table of the end-to-end cases: each stage's median milliseconds, and each ISR setting's
    end-to-end gain next to its network-only gain (against the first setting of the same backend and
    label mode, from the same interleaved frames)."""
    first_isr: dict[Case, Measurement] = {}
    for m in results:
        if not m.error:
            first_isr.setdefault(m.case.isr_group, m)
    lines = ["| network | image | backend | labels | ISR | pre-processing ms | network ms | post-processing ms "
             "| frame p50 ms | post / network | ISR gain end to end | ISR gain network only | end to end / network only |",
             "|" + "---|" * 13]
    for m in results:
        c = m.case
        if not c.end_to_end or m.error:
            continue
        pre, net, post = (m.stage_p50(stage) for stage in STAGES)
        first = first_isr[c.isr_group]
        if c.isr and first is not m:
            whole, network = stream_gain(m, first), stream_gain(m, first, "network")
            if whole is None or network is None:  # no interleaved frames: the medians of the cases' rounds
                whole, network = isr_gain(m, first), isr_gain(m, first, "network")
            gains = f"{whole:+.1%} | {network:+.1%} | {whole / network:.2f}" if network else f"{whole:+.1%} | – | –"
        else:
            gains = "– | – | –"
        labels = ("its own" if c.backend == "transformers" else c.label_mode) if c.segments else "–"
        lines.append(f"| {c.network} | {c.end_to_end[0]}x{c.end_to_end[1]} | {c.label} | {labels} | {c.isr or '–'} "
                     f"| {_fmt(pre)} | {_fmt(net)} | {_fmt(post)} | {_fmt(m.p50)} | {_fmt(post / net, '.1%')} "
                     f"| {gains} |")
    return "\n".join(lines)


def table(results: list[Measurement]) -> str:
    """Markdown table. "× baseline" is frames per second relative to eager fp32 at the first ISR setting
    (end to end: relative to ``transformers``);
    "deviation" is the output's distance from eager fp32 on the sample photograph (share of labels
    that differ, or mean relative depth difference); "ISR fps gain" compares a setting with the first
    one on the same backend (from the interleaved timings, :func:`isr_groups`), beside the
    multiply-adds it saves."""
    baseline: dict[tuple[str, int, int], float] = {}
    first_isr: dict[Case, Measurement] = {}
    for m in results:
        key = (m.case.network, m.case.height, m.case.width)
        reference = "transformers" if m.case.end_to_end else "eager"
        if m.case.backend == reference and m.case.precision == "fp32" and key not in baseline and not m.error:
            baseline[key] = m.fps
        if not m.error:
            first_isr.setdefault(m.case.isr_group, m)
    head = ("| network | size | backend | ISR | p50 ms | p90 ms | fps (batch 1) | images/s (batch {b}) "
            "| peak MiB | GMACs | × baseline | deviation from eager | ISR fps gain | MAC cut |").format(
                b=results[0].case.batch if results else 1)
    lines = [head, "|" + "---|" * 14]
    for m in results:
        c = m.case
        ratio = m.fps / baseline.get((c.network, c.height, c.width), float("nan"))
        size = f"{c.height}x{c.width}"
        if c.end_to_end:
            task = network_spec(c.network).task
            processor = "384x384 (DPTImageProcessor)" if task == "depth" else "512x512 (SegformerImageProcessor)"
            official = "official keep-aspect" if task == "depth" else "official aligned resize"
            network_input = processor if c.backend == "transformers" else size if c.fixed_input else official
            size = f"{c.end_to_end[0]}x{c.end_to_end[1]} image, input {network_input}"
            if c.segments:
                size += f", {c.label_mode} labels" if c.backend != "transformers" else ", its own labels"
        if m.error:
            lines.append(f"| {c.network} | {size} | {c.label} | {c.isr or '–'} "
                         f"| failed: {m.error} ||||||||||")
            continue
        gain, cut = _isr_columns(m, first_isr)
        dev = "–" if math.isnan(m.deviation) else (
            f"{m.deviation:.1%} labels" if network_spec(c.network).task == "segmentation" else f"{m.deviation:.2%}")
        lines.append(f"| {c.network} | {size} | {c.label} | {c.isr or '–'} | {_fmt(m.p50)} "
                     f"| {_fmt(m.p90)} | {_fmt(m.fps, '.2f')} | {_fmt(m.throughput, '.2f')} | {_fmt(m.peak_mib, '.0f')} "
                     f"| {_fmt(m.gmacs, '.2f')} | {_fmt(ratio, '.2f')} | {dev} | {gain} | {cut} |")
    return "\n".join(lines)


def add_deviations(results: list[Measurement], workdir: Path) -> None:
    """Fill ``deviation`` from the sample outputs the cases left in ``workdir`` (eager is the reference)."""
    for m in results:
        c = m.case
        if m.error or c.end_to_end or c.backend == "eager":
            continue
        reference = workdir / (Case(c.network, "eager", c.height, c.width, c.isr, device=c.device).slug + ".npy")
        output = workdir / (c.slug + ".npy")
        if reference.exists() and output.exists():
            m.deviation = deviation(np.load(output), np.load(reference), network_spec(c.network).task)


def isr_groups(cases: list[Case]) -> list[list[int]]:
    """Indices of the cases that are ISR settings of one network, backend, size and device (and image size
    and label mode end to end), per group of two or more: each group is timed interleaved in one process
    for the "ISR fps gain" columns."""
    groups: dict[Case, list[int]] = {}
    for i, c in enumerate(cases):
        if c.isr:
            groups.setdefault(c.isr_group, []).append(i)
    return [indices for indices in groups.values() if len(indices) > 1]


def plot(results: list[Measurement], path: Path) -> bool:
    """A bar chart of frames per second per case (matplotlib, when installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ok = [m for m in results if not m.error]
    labels = [f"{m.case.network}\n{m.case.label} {m.case.isr or ''}" for m in ok]
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
    rounds = max(1, args.rounds)
    runs = max(1, math.ceil(args.runs / rounds))
    print(f"# dense-perception bench: torch {torch.__version__}, device {args.device}, {args.threads} threads, "
          f"{platform.machine()}, warm-up {args.warmup}, {rounds} interleaved rounds of {runs} timed runs; "
          f"{len(cases)} cases", flush=True)
    results: list[Measurement] = [Measurement(case) for case in cases]
    workdir = out / "work"  # exported graphs and sample outputs, reused by later rounds
    workdir.mkdir(exist_ok=True)
    for case in cases:  # graphs are exported (and int8 calibrated) before timing, not inside a round
        if case.backend in FIXED_BATCH_ONE:
            print(f"[preparing] {case.network} {case.backend} {case.isr or ''} graph ...", flush=True)
            measure(case, warmup=0, runs=1, workdir=workdir)
    groups = isr_groups(cases)
    interleaved: dict[int, dict[str, list[float]]] = {}
    for round_ in range(1, rounds + 1):
        for i, case in enumerate(cases):
            print(f"[round {round_}/{rounds}, {i + 1}/{len(cases)}] {case.network} {case.label} "
                  f"{case.isr or ''} ...", flush=True)
            measured = measure(case, args.warmup, runs, workdir=workdir)
            if measured.error:
                print(f"    failed: {measured.error}", flush=True)
            results[i] = results[i].merge(measured)
        for indices in groups:  # each round, so a slow spell of the machine hits only part of the turns
            c = cases[indices[0]]
            print(f"[round {round_}/{rounds}, ISR interleaved] {c.network} {c.label}: {len(indices)} settings "
                  f"in turn, {runs} turns ...", flush=True)
            timings = measure_isr([cases[i] for i in indices], args.warmup, runs, workdir)
            if isinstance(timings, str):
                print(f"    failed: {timings}", flush=True)
                continue
            for i, timed in zip(indices, timings):
                pooled = interleaved.setdefault(i, {})
                for key, values in timed.items():
                    pooled.setdefault(key, []).extend(values)
    for i, timed in interleaved.items():
        results[i].interleaved_ms = timed.pop("total")
        results[i].interleaved_stage_ms = timed
    add_deviations(results, workdir)
    print(table(results))
    if any(m.stage_ms for m in results):
        print("\nEnd to end, by stage (medians; ISR gains from the total time of the settings' frames timed in "
              "turn, end to end and network only from the same frames):")
        print(stage_table(results))
    if any(m.interleaved_ms for m in results):
        print("ISR fps gain: against the first ISR setting of the same backend, the settings timed in turn "
              "in one process (each turn: one untimed forward, then one timed); median of the turns' ratios")
    (out / "results.json").write_text(json.dumps([m.to_json() for m in results], indent=2))
    plotted = plot(results, out / "results.png")
    print(f"wrote {out / 'results.json'}" + (f" and {out / 'results.png'}" if plotted else
                                            " (install matplotlib for results.png)"))
    return 1 if all(m.error for m in results) else 0
