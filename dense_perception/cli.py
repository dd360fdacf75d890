"""The ``dense-perception`` command. Each sub-command lives in ``dense_perception.commands.<name>``
and provides ``add_arguments(parser)`` and ``main(args) -> int``."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

#: sub-command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("dense_perception.commands.info", "parameters and multiply-adds of a network"),
    "demo": ("dense_perception.commands.demo", "depth, labels, cloud and an MCAP bag of a bundled sample image"),
    "run": ("dense_perception.commands.run", "depth, labels and clouds for an image, folder, video or rosbag2"),
    "bench": ("dense_perception.commands.bench", "latency, throughput and memory per network and backend"),
    "export": ("dense_perception.commands.export", "fixed-shape ONNX graph of a network (one per size and ISR)"),
    "engines": ("dense_perception.commands.engines", "build, list and clear cached TensorRT engines and ONNX graphs"),
    "weights": ("dense_perception.commands.weights", "list, download, verify and import the official checkpoints"),
}


class UsageError(Exception):
    """A problem with what the user asked for; printed as one line, exit status 2."""


class OutputError(OSError):
    """An output that cannot be written (permission, disk full); printed as one line, exit status 1.
    The message names the output and the reason."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dense-perception",
        description="Monocular depth (DPT) and semantic segmentation (EDAFormer) for robots, without ROS.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.main(args) or 0)
    except (UsageError, ValueError, FileNotFoundError) as exc:
        print(f"dense-perception {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # cannot write the output (OutputError), read a file, reach a server
        text = str(exc) if isinstance(exc, OutputError) or not exc.filename else (
            f"{exc.filename}: {exc.strerror or exc}")
        print(f"dense-perception {args.command}: error: {' '.join(text.split())}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the package's own errors: one line, no traceback
        if not type(exc).__module__.startswith("dense_perception."):
            raise  # a bug: keep its traceback
        print(f"dense-perception {args.command}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"dense-perception {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
