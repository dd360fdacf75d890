"""``dense-perception info NAME``: parameters and multiply-adds of a network, per part and in total."""
from __future__ import annotations

import argparse

import torch

from ..networks import ISRScheme, ISRSetting, available_networks, build_network, network_spec
from ..networks.cost import CONVENTION, count_cost
from ..networks.isr import EDAFORMER_ISR


def parse_int_list(text: str) -> list[int]:
    """``"16,8,2,1"`` → ``[16, 8, 2, 1]`` (brackets and spaces allowed)."""
    cleaned = text.replace("[", "").replace("]", "").replace(" ", "")
    try:
        return [int(v) for v in cleaned.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_isr_arguments(parser: argparse.ArgumentParser) -> None:
    """The ISR options every command that runs a segmentation network shares."""
    group = parser.add_argument_group("inference spatial reduction (networks with ISR; ignored for depth networks)")
    group.add_argument("--isr", type=int, default=1, metavar="K",
                       help="multiply every training key/value ratio the network can reduce by K (1 = training)")
    group.add_argument("--isr-encoder", type=parse_int_list, default=None, metavar="E1,E2,E3,E4",
                       help="effective encoder ratios, paper notation, e.g. 16,8,2,1")
    group.add_argument("--isr-decoder", type=parse_int_list, default=None, metavar="D4,D3,D2",
                       help="EDAFormer: effective decoder pools c4,c3,c2, paper notation, e.g. 2,4,8")


def isr_from_args(args: argparse.Namespace, scheme: ISRScheme | None = EDAFORMER_ISR) -> ISRSetting | int | None:
    """The setting the ISR options ask for, validated by the network's ``scheme`` (default EDAFormer's).

    A network without ISR (``scheme`` None) gets what was asked as it is -- the ratio, or the explicit
    ratios as a setting -- and its ``set_isr`` refuses anything but ratio 1 with the reason ("ISR does
    not apply to ...")."""
    if scheme is None:
        if args.isr_encoder or args.isr_decoder:
            return ISRSetting(args.isr_encoder or (), args.isr_decoder or ())
        return args.isr
    return scheme.make(args.isr, args.isr_encoder, args.isr_decoder)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("network", choices=available_networks(), metavar="NAME",
                        help="one of: " + ", ".join(available_networks()))
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="network input size (default: the network's official input size)")
    add_isr_arguments(parser)


def _row(name: str, params: int, macs: int) -> str:
    return f"  {name:<14}{params / 1e6:>11.3f} M{macs / 1e9:>14.3f} G"


def main(args: argparse.Namespace) -> int:
    spec = network_spec(args.network)
    height, width = args.size or spec.input_size
    if height < 1 or width < 1:
        raise ValueError(f"--size must be positive, got {height} {width}")
    with torch.device("meta"):  # shapes only: parameters are counted, the cost is traced on meta tensors
        net = build_network(args.network)
    lines = [f"{spec.name}: {spec.description}", f"input 1x3x{height}x{width}"]
    if spec.isr is not None:
        setting = net.set_isr(isr_from_args(args, spec.isr))
        net.check_isr(height, width)
        lines.append(spec.isr.describe(setting) + " (paper notation)")
    elif spec.task == "segmentation":
        net.set_isr(isr_from_args(args, None))  # ValueError unless ratio 1: ISR does not apply
    cost = count_cost(net, height, width)
    lines += [f"  {'part':<14}{'parameters':>13}{'multiply-adds':>16}"]
    lines += [_row(part, cost.params.get(part, 0), cost.macs.get(part, 0)) for part in cost.macs]
    lines += [_row("total", cost.total_params, cost.total_macs),
              f"convention: {CONVENTION}; 1 GMAC ~ 2 GFLOPs. The papers' 'GFLOPs' (mmcv counts) are MACs: "
              f"these totals agree with EDAFormer's and with shared/design/sra.md section 8.4 within 1 %."]
    print("\n".join(lines))
    return 0
