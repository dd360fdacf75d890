"""ONNX Runtime (CPU) on EDAFormer: the exported graph as it is against the session the engine makes,
with the FFNs' odd widths padded for MLAS's blocked layout (dense_perception/engines/nchwc_padding.py).

    python bench/bench_nchwc_widening.py [--network edaformer_t_ade20k] [--size 512] [--turns 30] [--threads 2]

A benchmark, not a test: it prints a table. Both layouts at both ISR settings (training ratios and
[16,8,2,1]-[2,4,8]) are loaded in one process and timed in turn, each turn one untimed and one timed
forward per session (``benchmark.time_in_turn``); ratios are the median over turns of each turn's time
ratio (``benchmark.paired_ratio``), so drift of the machine between turns cancels.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from dense_perception.benchmark import paired_ratio, time_in_turn
from dense_perception.engines.export import INPUT_NAME, MIN_OPSET, GraphCache
from dense_perception.engines.nchwc_padding import pad_depthwise_widths
from dense_perception.networks import ISRSetting, build_network
from dense_perception.networks.common import fill_reference_weights

SETTINGS = [ISRSetting(), ISRSetting((16, 8, 2, 1), (2, 4, 8))]
LAYOUTS = ("as exported", "widened")


def sessions(network: str, size: int, threads: int, folder: Path) -> tuple[dict, int]:
    """``{(layout, setting): session}`` and how many depthwise convs the widening padded."""
    net = build_network(network)
    net.load_state_dict(fill_reference_weights(net))
    cache = GraphCache(net, size, size, folder, "fp32", MIN_OPSET, None)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    made, widened = {}, 0
    for setting in SETTINGS:
        path = cache(setting)
        model = onnx.load(str(path))
        widened = pad_depthwise_widths(model)
        for layout, source in zip(LAYOUTS, (str(path), model.SerializeToString())):
            made[layout, setting] = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return made, widened


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", default="edaformer_t_ade20k")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--turns", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        print(f"exporting {args.network} at {args.size}x{args.size} for {len(SETTINGS)} ISR settings ...",
              flush=True)
        made, widened = sessions(args.network, args.size, args.threads, Path(folder))
        feed = {INPUT_NAME: np.random.default_rng(0).random((1, 3, args.size, args.size), dtype=np.float32)}
        keys = list(made)
        timings = time_in_turn([partial(made[key].run, None, feed) for key in keys], 1, args.turns)
        times = dict(zip(keys, timings))

    def paired(a: tuple, b: tuple) -> float:
        return paired_ratio(times[a], times[b])

    print(f"\n{args.network} {args.size}x{args.size}, onnxruntime {ort.__version__} CPU, {args.threads} threads, "
          f"{platform.machine()}, {args.turns} turns; {widened} depthwise convs widened\n")
    print("| layout | ISR | median ms | × as exported (paired) | ISR fps gain (paired) |")
    print("|---|---|---|---|---|")
    for layout in LAYOUTS:
        for setting in SETTINGS:
            speed_up = paired((LAYOUTS[0], setting), (layout, setting))
            gain = paired((layout, SETTINGS[0]), (layout, setting)) - 1
            print(f"| {layout} | {setting} | {statistics.median(times[layout, setting]):.1f} | "
                  f"{speed_up:.3f} | {'–' if setting == SETTINGS[0] else f'{100 * gain:+.1f} %'} |")


if __name__ == "__main__":
    main()
