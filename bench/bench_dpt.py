"""Our DPT-Hybrid / DPT-Large against Hugging Face ``transformers``' DPT with the same weights, on CPU.

    python bench/bench_dpt.py [--runs 5] [--warmup 1] [--threads 2] [--models hybrid large] [--json FILE]

A benchmark, not a test: it prints a table. For each backbone a randomly initialised HF
``DPTForDepthEstimation`` (the released Intel/dpt-* architecture) is saved once; ours loads that file
through ``load_checkpoint`` (HF keys are converted on load), HF loads it directly — same weights.
Latency: both networks live in this process and are called alternately, round by round (on a shared
or throttled VM, drift then hits both alike); the median of ``--runs`` after ``--warmup`` rounds.
Memory: each measurement runs in a fresh subprocess doing one forward: the peak resident set size
during inference (``VmHWM`` after resetting it via ``/proc/self/clear_refs``; else ``ru_maxrss`` of
the whole process) and its increase over the resident size with the weights loaded. HF's ViT-based DPT only runs square inputs of
``config.image_size``, so 384×672 is measured for ours alone.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

NAMES = {"hybrid": "dpt_hybrid_midas", "large": "dpt_large_midas"}
SIZES = ((384, 384), (384, 672))


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _build(impl: str, name: str, weights: str) -> torch.nn.Module:
    from dense_perception.networks.dpt_hf import HF_CONFIGS

    if impl == "ours":
        from dense_perception.networks import build_network, load_checkpoint

        net = build_network(name)
        load_checkpoint(net, weights)
        return net
    import transformers

    hf = transformers.DPTForDepthEstimation(transformers.DPTConfig(**HF_CONFIGS[name])).eval()
    hf.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    return hf


def _caller(impl: str, net: torch.nn.Module):
    if impl == "ours":
        return net
    return lambda x: net(pixel_values=x).predicted_depth


def time_interleaved(name: str, weights: str, args: argparse.Namespace) -> dict[tuple[str, tuple[int, int]], float]:
    """Median latency (ms) per (implementation, size), all calls interleaved round by round."""
    calls = {}
    for impl in ("ours", "hf"):
        net = _build(impl, name, weights)
        for size in SIZES:
            if impl == "ours" or size[0] == size[1]:
                x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(7))
                calls[(impl, size)] = (_caller(impl, net), x)
    times: dict[tuple[str, tuple[int, int]], list[float]] = {key: [] for key in calls}
    with torch.inference_mode():
        for round_ in range(args.warmup + args.runs):
            for key, (call, x) in calls.items():
                t0 = time.perf_counter()
                call(x)
                if round_ >= args.warmup:
                    times[key].append(time.perf_counter() - t0)
    return {key: statistics.median(t) * 1e3 for key, t in times.items()}


def worker(args: argparse.Namespace) -> None:
    """Peak memory of one forward of (implementation, network, size) in this process; one JSON line."""
    torch.set_num_threads(args.threads)
    height, width = args.size
    net = _build(args.impl, args.name, args.weights)
    call = _caller(args.impl, net)
    x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(7))
    gc.collect()
    loaded_kib = _status_kib("VmRSS")
    exact = _reset_peak_rss()
    with torch.inference_mode():
        out = call(x)
    assert out.shape == (1, height, width), out.shape
    peak_kib = _status_kib("VmHWM") if exact else None
    if peak_kib is None:
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({
        "peak_mib": peak_kib / 1024,
        "loaded_mib": (loaded_kib or 0) / 1024, "exact_peak": exact,
    }))


def measure(impl: str, name: str, size: tuple[int, int], weights: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--impl", impl, "--name", name, "--weights", weights,
           "--size", str(size[0]), str(size[1]), "--threads", str(args.threads)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                     os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"{impl} {name} {size} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def save_hf_weights(name: str, folder: str) -> str:
    """A seeded random HF model of ``name``'s architecture, saved as a plain state_dict."""
    import transformers

    from dense_perception.networks.dpt_hf import HF_CONFIGS

    torch.manual_seed(0)
    hf = transformers.DPTForDepthEstimation(transformers.DPTConfig(**HF_CONFIGS[name])).eval()
    path = os.path.join(folder, f"{name}_hf.pt")
    torch.save(hf.state_dict(), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", choices=sorted(NAMES), default=["hybrid", "large"])
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=["ours", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    torch.set_num_threads(args.threads)

    import transformers

    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}, {args.threads} threads, {args.runs} runs after {args.warmup} warm-up, fp32")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for model in args.models:
            name = NAMES[model]
            weights = save_hf_weights(name, folder)
            latency = time_interleaved(name, weights, args)
            gc.collect()
            for size in SIZES:
                ours = {**measure("ours", name, size, weights, args), "p50_ms": latency[("ours", size)]}
                hf = None
                if ("hf", size) in latency:
                    hf = {**measure("hf", name, size, weights, args), "p50_ms": latency[("hf", size)]}
                rows.append({"network": name, "size": f"{size[0]}x{size[1]}", "ours": ours, "hf": hf})
            os.remove(weights)

    header = (f"{'network':<18} {'HxW':>8} | {'ours p50 ms':>11} {'peak MiB':>9} {'+infer MiB':>10} | "
              f"{'HF p50 ms':>9} {'peak MiB':>9} {'+infer MiB':>10} | {'HF/ours time':>12} {'mem':>6}")
    print(header)
    print("-" * len(header))
    for row in rows:
        o, h = row["ours"], row["hf"]
        mine = f"{o['p50_ms']:>11.0f} {o['peak_mib']:>9.0f} {o['peak_mib'] - o['loaded_mib']:>10.0f}"
        if h is None:
            theirs = f"{'n/a: HF DPT runs square inputs only':>30}"
            ratio = f"{'-':>12} {'-':>6}"
        else:
            theirs = f"{h['p50_ms']:>9.0f} {h['peak_mib']:>9.0f} {h['peak_mib'] - h['loaded_mib']:>10.0f}"
            ratio = f"{h['p50_ms'] / o['p50_ms']:>11.2f}x {h['peak_mib'] / o['peak_mib']:>5.2f}x"
        print(f"{row['network']:<18} {row['size']:>8} | {mine} | {theirs} | {ratio}")
    if not all(r["ours"]["exact_peak"] for r in rows):
        print("# peak = ru_maxrss of the whole process (VmHWM could not be reset here)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
