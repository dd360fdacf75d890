"""Does ISR really cut time on this machine? EDAFormer-T and -B at 512x512 under the paper's settings,
and peak memory of EDAFormer-T at 1024x2048 with our attention kernel vs the naive score matrix.

    python bench/bench_edaformer_isr.py [--runs 7] [--warmup 2] [--threads 2] [--skip-b] [--skip-memory]

A benchmark, not a test: it prints a table (and --json FILE writes the same numbers).
Timing: the settings are interleaved round by round (drift hits them equally); the median is reported.
Memory: each measurement runs in a fresh subprocess; peak resident set size minus the size after the
network was built and warmed up on a tiny input.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch

from dense_perception.networks import ISRSetting, build_network
from dense_perception.networks.common import fill_reference_weights
from dense_perception.networks.cost import count_cost

SETTINGS = [
    ISRSetting(),
    ISRSetting((8, 4, 2, 1), (2, 4, 8)),
    ISRSetting((16, 8, 2, 1), (2, 4, 8)),
    ISRSetting((16, 8, 4, 2), (2, 4, 8)),
]


def time_settings(name: str, size: int, runs: int, warmup: int) -> list[dict]:
    net = build_network(name)
    net.load_state_dict(fill_reference_weights(net))
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(7))
    times: dict[ISRSetting, list[float]] = {s: [] for s in SETTINGS}
    with torch.inference_mode():
        for _ in range(warmup):
            for s in SETTINGS:
                net.set_isr(s)
                net(x)
        for _ in range(runs):
            for s in SETTINGS:
                net.set_isr(s)
                t0 = time.perf_counter()
                net(x)
                times[s].append(time.perf_counter() - t0)
    rows = []
    base_ms = statistics.median(times[SETTINGS[0]]) * 1e3
    base_macs = None
    for s in SETTINGS:
        net.set_isr(s)
        macs = count_cost(net, size, size).total_macs
        base_macs = base_macs or macs
        ms = statistics.median(times[s]) * 1e3
        rows.append({"network": name, "size": size, "isr": str(s), "gmacs": macs / 1e9,
                     "mac_cut": 1 - macs / base_macs, "median_ms": ms, "speedup": base_ms / ms})
    return rows


def _naive_attention(q, k, v, *args, **kwargs):
    """What the official code computes: the full score matrix in memory."""
    return (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1) @ v


def _status_mib(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_child(setting: str, naive: bool, height: int, width: int) -> None:
    """Run in a subprocess: print the peak resident memory of one forward, and its growth over the
    resident memory before it (the peak is reset through /proc/self/clear_refs first)."""
    torch.set_num_threads(2)
    if naive:
        torch.nn.functional.scaled_dot_product_attention = _naive_attention
    net = build_network("edaformer_t_cityscapes")
    net.set_isr(ISRSetting.parse(setting))
    with torch.inference_mode():
        net(torch.zeros(1, 3, 64, 128))
        before = _status_mib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident size
        t0 = time.perf_counter()
        net(torch.zeros(1, 3, height, width))
        seconds = time.perf_counter() - t0
    peak = _status_mib("VmHWM")
    print(json.dumps({"peak_mib": peak, "growth_mib": peak - before, "seconds": seconds}))


def peak_memory(setting: ISRSetting, naive: bool, height: int, width: int) -> dict:
    cmd = [sys.executable, __file__, "--child", str(setting), "--size", str(height), str(width)]
    if naive:
        cmd.append("--naive")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return {"isr": str(setting), "attention": "naive score matrix" if naive else "scaled_dot_product_attention",
            **json.loads(out.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-b", action="store_true", help="time EDAFormer-T only")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--naive", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, nargs=2, default=(1024, 2048), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        peak_memory_child(args.child, args.naive, *args.size)
        return

    torch.set_num_threads(args.threads)
    print(f"# EDAFormer ISR benchmark — torch {torch.__version__}, {args.threads} threads, "
          f"{platform.processor() or platform.machine()}, fp32 eager, batch 1, median of {args.runs}")
    results: dict[str, list] = {"timing": [], "memory": []}
    networks = ["edaformer_t_ade20k"] + ([] if args.skip_b else ["edaformer_b_ade20k"])
    print("| network | ISR (paper notation) | GMACs | MAC cut | median ms | speed-up vs training |")
    print("|---|---|---|---|---|---|")
    for name in networks:
        for row in time_settings(name, 512, args.runs, args.warmup):
            results["timing"].append(row)
            print(f"| {row['network']} 512x512 | {row['isr']} | {row['gmacs']:.2f} | {row['mac_cut']:.1%} "
                  f"| {row['median_ms']:.0f} | {row['speedup']:.2f}x |")
    if not args.skip_memory:
        print("\n| EDAFormer-T 1024x2048 | attention | peak RSS of the process | growth during the forward | forward s |")
        print("|---|---|---|---|---|")
        for setting in (SETTINGS[0], SETTINGS[2]):
            for naive in (False, True):
                row = peak_memory(setting, naive, *args.size)
                results["memory"].append(row)
                print(f"| {row['isr']} | {row['attention']} | {row['peak_mib']:.0f} MiB | {row['growth_mib']:.0f} MiB "
                      f"| {row['seconds']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
