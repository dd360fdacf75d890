"""``dense-perception export NAME --size H W --out FILE``: a fixed-shape ONNX graph of one network.

One file per input size, ISR setting and precision (ISR is baked into the graph). Without
``--checkpoint`` the weights are random; the file says so in its metadata (``weights: untrained``).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..engines.export import MIN_OPSET, PRECISIONS, export_onnx, read_graph_info
from ..networks import available_networks, build_network, load_checkpoint, network_spec
from .info import add_isr_arguments, isr_from_args

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("network", choices=available_networks(), metavar="NAME",
                        help="one of: " + ", ".join(available_networks()))
    parser.add_argument("--checkpoint", type=Path, default=None, metavar="PATH",
                        help="weights to load (official checkpoint); without it the graph has random weights")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), required=True,
                        help="fixed network input size (multiples of 32 for DPT)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp16 keeps normalisations and softmax in fp32 and float32 input/output; "
                        "int8 is statically quantised for ONNX Runtime on the CPU")
    parser.add_argument("--calibration", nargs="+", type=Path, default=None, metavar="IMAGE_OR_FOLDER",
                        help="int8: images calibrating the activation ranges (default: the bundled sample; "
                        "frames from your camera fit your scenes better)")
    parser.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset, {MIN_OPSET} or newer")
    parser.add_argument("--batch", type=int, default=1, help="fixed batch size (default 1)")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE", help="the .onnx file to write")
    add_isr_arguments(parser)


def _isr_requested(args: argparse.Namespace) -> bool:
    return args.isr != 1 or bool(args.isr_encoder) or bool(args.isr_decoder)


def main(args: argparse.Namespace) -> int:
    from ..engines.tensorrt_ops import SOURCE, unsupported_ops
    from ..weights import sha256_file

    height, width = args.size
    net = build_network(args.network)
    if hasattr(net, "set_isr"):  # a network without ISR refuses anything but ratio 1, with the reason
        net.set_isr(isr_from_args(args, network_spec(args.network).isr))
        net.check_isr(height, width)
    elif _isr_requested(args):
        log.warning("%s has no inference spatial reduction; the ISR options are ignored", args.network)
    if args.checkpoint is None:
        log.warning("no --checkpoint: exporting UNTRAINED (random) weights; the graph's metadata says "
                    "weights=untrained")
        weights = "untrained"
    else:
        load_checkpoint(net, args.checkpoint)
        weights = f"{args.checkpoint.name} sha256:{sha256_file(args.checkpoint)}"
    path = export_onnx(net, args.out, height, width, precision=args.precision, opset=args.opset,
                       batch=args.batch, weights=weights, calibration=args.calibration)
    import onnx

    model = onnx.load(path)
    info = read_graph_info(model)
    unsupported = unsupported_ops(model)
    lines = [
        f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)",
        f"{info.network}: {info.task}, input {info.batch}x3x{info.height}x{info.width} -> {info.output_name}, "
        f"{info.precision}, opset {info.opset}" + (f", ISR {info.isr}" if info.isr else "") + f", weights {weights}"
        + (f", calibration {info.calibration}" if info.calibration else ""),
        ("TensorRT ONNX parser: all operators supported" if not unsupported else
         f"TensorRT ONNX parser: NOT supported: {', '.join(unsupported)}") + f"; operator list: {SOURCE}",
    ]
    print("\n".join(lines))
    return 0
