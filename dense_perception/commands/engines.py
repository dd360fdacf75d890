"""``dense-perception engines build|list|clear``: the engine cache (``--dir``, default
:func:`~dense_perception.engines.cache.default_engine_dir`) by hand.

``build`` makes the engines (TensorRT) or graphs (ONNX Runtime) for one network, input size and precision,
for one ISR setting and/or a list (``--isr-prebuild "1;2;[16,8,2,1]-[2,4,8]"``), so a robot starts without
building. ``list`` shows each file with what it was made for; ``clear`` removes them (one network's, or all):
only what the cache created (entries of its format, graphs with its manifest), never changing a folder's mode.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from ..engines.base import BACKEND_PRECISIONS, EngineError
from ..engines.cache import (CACHE_ENV, EngineCache, default_engine_dir, manifest_path, remove_artefact,
                             untrusted_reason)
from ..engines.export import read_graph_info
from ..networks import ISRScheme, ISRSetting, available_networks, network_spec
from ..networks.isr import EDAFORMER_ISR
from .info import add_isr_arguments, isr_from_args

log = logging.getLogger(__name__)
BACKENDS = ("tensorrt", "onnxruntime")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=None, metavar="DIR",
                        help=f"engine cache folder (default ${CACHE_ENV}, else {default_engine_dir()})")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = sub.add_parser("build", help="build engines (or ONNX graphs) into the cache")
    build.add_argument("network", choices=available_networks(), metavar="NAME",
                       help="one of: " + ", ".join(available_networks()))
    build.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), required=True,
                       help="fixed network input size")
    build.add_argument("--precision", choices=BACKEND_PRECISIONS["tensorrt"], default="fp32")
    build.add_argument("--backend", choices=BACKENDS, default="tensorrt")
    build.add_argument("--checkpoint", type=Path, default=None, metavar="PATH",
                       help="weights to load; without it the engine holds random weights")
    build.add_argument("--isr-prebuild", default="", metavar="LIST",
                       help='more ISR settings, ";"-separated: ratios or encoder-decoder lists, '
                            'e.g. "1;2;[16,8,2,1]-[2,4,8]"')
    add_isr_arguments(build)
    sub.add_parser("list", help="cached engines and graphs with what they were made for")
    clear = sub.add_parser("clear", help="remove cached engines and graphs")
    clear.add_argument("network", nargs="?", default=None, metavar="NAME",
                       help="only this network's files (default: all)")


def parse_isr_list(text: str, scheme: ISRScheme = EDAFORMER_ISR) -> list[ISRSetting | None]:
    """``"1;2;[16,8,2,1]-[2,4,8]"`` -> settings of ``scheme`` (empty items skipped)."""
    return [scheme.parse(item) for item in text.split(";") if item.strip()]


def _settings(args: argparse.Namespace, net: Any) -> list[ISRSetting | None]:
    scheme = network_spec(args.network).isr
    if scheme is None:
        if hasattr(net, "set_isr"):  # refuses anything but ratio 1, with the reason
            net.set_isr(isr_from_args(args, None))
        if args.isr_prebuild:
            raise ValueError(f"--isr-prebuild: {args.network} has no ISR")
        return [None]
    settings: list[ISRSetting | None] = []
    for setting in [isr_from_args(args, scheme)] + parse_isr_list(args.isr_prebuild, scheme):
        problem = scheme.problem(setting, *args.size)
        if problem:
            raise ValueError(problem)
        if setting not in settings:
            settings.append(setting)
    return settings


def _build(args: argparse.Namespace) -> int:
    from ..engines.switching import onnxruntime_factory
    from ..networks import build_network, load_checkpoint

    if args.backend == "tensorrt":
        from ..engines.tensorrt_engine import import_tensorrt

        import_tensorrt()  # fail before the slow part
    net = build_network(args.network)
    if args.checkpoint is None:
        log.warning("no --checkpoint: building with UNTRAINED (random) weights")
    else:
        load_checkpoint(net, args.checkpoint)
    settings = _settings(args, net)
    height, width = args.size
    if args.backend == "tensorrt":
        from ..engines.tensorrt_engine import TensorRTFactory

        make: Any = TensorRTFactory(net, height, width, args.dir, args.precision, "cuda")
    else:
        make = onnxruntime_factory(net, height, width, args.dir, args.precision)
    for setting in settings:
        engine = make(setting)
        described = engine.describe()
        print(f"{args.backend} {args.network} {height}x{width} {args.precision} ISR {setting or '-'}: "
              f"{described.get('file')}")
    return 0


def _rows(folder: Path) -> list[str]:
    rows = []
    for entry in EngineCache(folder).entries():
        key = entry.key
        if key is None:
            rows.append(f"{entry.path.name}  UNUSABLE ({entry.problem}; rebuilt on next use)")
            continue
        if "network" not in key:  # a timing cache
            what = f"timing cache  {key.get('library')} {key.get('library_version')}  {key.get('gpu_name')}"
        else:
            what = (f"{key['library']} {key['library_version']}  {key['network']} {key['height']}x{key['width']} "
                    f"ISR {key['isr'] or '-'} {key['precision']}  {key['gpu_name'] or 'cpu'} "
                    f"sm{key['compute_capability']}")
        rows.append(f"{entry.path.name}  {entry.size / 1e6:.1f} MB  {what}")
    for path in sorted(folder.glob("*.onnx")):
        try:
            info = read_graph_info(path)
            what = (f"onnx graph  {info.network} {info.height}x{info.width} ISR {info.isr or '-'} "
                    f"{info.precision}  weights {info.weights}")
        except EngineError as exc:
            what = f"UNUSABLE onnx graph ({exc})"
        rows.append(f"{path.name}  {path.stat().st_size / 1e6:.1f} MB  {what}")
    return rows


def _clear(folder: Path, network: str | None) -> int:
    """Remove what the cache created (entries, and graphs with a manifest), never another file,
    never a folder's mode."""
    cache = EngineCache(folder)
    removed = cache.clear(keep=lambda e: network is not None and (e.key or {}).get("network") != network)
    left = []
    for path in sorted(folder.glob("*.onnx")):
        if untrusted_reason(manifest_path(path)) is not None or untrusted_reason(path) is not None:
            left.append(path)  # not made by the cache (no manifest of the user's): not ours to delete
            continue
        try:
            mine = network is None or read_graph_info(path).network == network
        except EngineError:
            mine = network is None
        if mine:
            remove_artefact(path)
            removed.append(path)
    print(f"removed {len(removed)} file(s) from {folder}"
          + (f"; left {len(left)} .onnx file(s) the cache did not create" if left else ""))
    return 0


def main(args: argparse.Namespace) -> int:
    if args.dir is None:
        args.dir = default_engine_dir()
    try:
        if args.action == "build":
            return _build(args)
        if not args.dir.is_dir():  # list, clear
            print(f"{args.dir}: no engine cache yet")
            return 0
        if args.action == "list":
            rows = _rows(args.dir)
            print("\n".join(rows) if rows else f"{args.dir}: empty")
            return 0
        return _clear(args.dir, args.network)
    except EngineError as exc:  # one line, like the command line's other errors
        print(f"dense-perception engines: error: {exc}", file=sys.stderr)
        return 2
