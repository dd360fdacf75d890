"""``dense-perception weights``: list, download, verify, locate and import the official checkpoints.

* ``list`` — every catalogued checkpoint: file, present/missing, verified, size, source.
* ``download NAME | --all [--base-url URL]`` — fetch into the models folder (resumable), then verify.
* ``verify [PATH] [--network NAME] [--repin] [--install]`` — check one file, or every one present.
* ``path NAME`` — print where ``NAME``'s checkpoint is; exit 1 with the way to get it when missing.
* ``import-hf PATH [--network NAME] [--output FILE]`` — convert a Hugging Face DPT state dict.

The models folder is ``$DENSE_PERCEPTION_MODELS`` or ``./models``. Exit status: 0 success, 1 a file is
missing or failed (download, verification), 2 a usage error.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import weights as W
from ..networks import CheckpointError, available_networks

_PROG = "dense-perception weights"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="catalogued checkpoints and whether they are present and verified")

    dl = actions.add_parser("download", help="download a checkpoint into the models folder (resumable)")
    dl.add_argument("network", nargs="?", metavar="NAME", help="network name (see `weights list`)")
    dl.add_argument("--all", action="store_true", help="every checkpoint with a direct download")
    dl.add_argument("--base-url", metavar="URL", help="fetch <URL>/<file name> instead (a mirror)")
    dl.add_argument("--no-progress", action="store_true", help="no progress bar")
    dl.add_argument("--no-verify", action="store_true", help="skip the key check after downloading")

    ver = actions.add_parser("verify", help="check size, hash and network fit of checkpoint files")
    ver.add_argument("path", nargs="?", type=Path, metavar="PATH",
                     help="file to check (default: every catalogued file present in the models folder)")
    ver.add_argument("--network", metavar="NAME", help="network the file should be (default: identify it)")
    ver.add_argument("--repin", action="store_true", help="accept a changed file and pin its new digest")
    ver.add_argument("--install", action="store_true",
                     help="after a successful check, copy PATH into the models folder under its catalogue name")

    path = actions.add_parser("path", help="print the path of a network's checkpoint")
    path.add_argument("network", metavar="NAME")

    imp = actions.add_parser("import-hf", help="convert a Hugging Face DPTForDepthEstimation state dict")
    imp.add_argument("path", type=Path, metavar="PATH", help="pytorch_model.bin or model.safetensors")
    imp.add_argument("--network", metavar="NAME", help="DPT network (default: hybrid or large by the keys)")
    imp.add_argument("--output", type=Path, metavar="FILE", help="default: models/<network>_from_hf.pt")


def _fail(message: str) -> int:
    print(f"{_PROG}: {message}", file=sys.stderr)
    return 1


def _check_network(name: str | None) -> None:
    if name is not None and name not in available_networks():
        raise ValueError(f"unknown network {name!r}; choose from: {', '.join(available_networks())}")


def _size(n: int | None, approx: bool = False) -> str:
    if n is None:
        return "?"
    return f"{'≈' if approx else ''}{n / 1e6:.1f} MB"


def _list(_args: argparse.Namespace) -> int:
    models = W.models_dir()
    rows = [("network", "file", "status", "verified", "size", "source")]
    for entry in W.CATALOGUE:
        found = W.find_checkpoint(entry.network, models)
        if found is None:
            status, verified, size = "missing", "-", _size(entry.approx_size, approx=True)
        else:
            status = "present" if found.name == entry.file_name else f"present ({found.name})"
            verified = W.pin_state(found, models)
            size = _size(found.stat().st_size)
        source = entry.source if entry.downloadable else f"by hand: {entry.manual_url}"
        rows.append((entry.network, entry.file_name, status, verified, size, source))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    print(f"models folder: {models} (set ${W.MODELS_ENV} to change)")
    return 0


def _download_one(name: str, args: argparse.Namespace) -> bool:
    try:
        path = W.download(name, base_url=args.base_url, progress=not args.no_progress)
    except W.ManualDownloadRequired as exc:
        _fail(str(exc))
        return False
    except W.WeightsError as exc:
        _fail(f"{name}: {exc}")
        return False
    if args.no_verify:
        print(path)
        return True
    report = W.verify(path, name)
    print(report.summary())
    return report.ok


def _download(args: argparse.Namespace) -> int:
    if args.all == (args.network is not None):
        raise ValueError("give either NAME or --all")
    _check_network(args.network)
    if args.network:
        return 0 if _download_one(args.network, args) else 1
    ok = True
    for entry in W.CATALOGUE:
        if entry.downloadable or args.base_url:
            ok = _download_one(entry.network, args) and ok
        else:
            print(f"{_PROG}: skipped: {entry.manual_instructions(W.models_dir())}", file=sys.stderr)
    return 0 if ok else 1


def _verify(args: argparse.Namespace) -> int:
    _check_network(args.network)
    if args.path is None:
        if args.install:
            raise ValueError("--install needs a PATH")
        targets = [(p, args.network or n) for n, p in W.present() if args.network in (None, n)]
        if not targets:
            return _fail(f"no catalogued checkpoint in {W.models_dir()}; `{_PROG} list` shows the expected files")
    else:
        targets = [(args.path, args.network)]
    ok = True
    for path, name in targets:
        report = W.verify(path, name, repin=args.repin)
        print(report.summary())
        ok = ok and report.ok
        if report.ok and args.install:
            if report.network is None:
                return _fail(f"{path}: cannot tell which network it is ({', '.join(report.candidates)}); "
                             f"name it with --network")
            print(f"installed as {W.install(path, report.network)}")
    return 0 if ok else 1


def _path(args: argparse.Namespace) -> int:
    _check_network(args.network)
    found = W.find_checkpoint(args.network)
    if found is None:
        expected = W.checkpoint_path(args.network)
        return _fail(f"{args.network}: {expected} is missing; {W.download_hint(args.network)}")
    print(found)
    return 0


def _import_hf(args: argparse.Namespace) -> int:
    _check_network(args.network)
    if not args.path.is_file():
        raise FileNotFoundError(f"{args.path} does not exist")
    dest = W.import_hf(args.path, args.network, args.output)
    print(f"saved {dest} (official DPT layout; verified and pinned)")
    return 0


_ACTIONS = {"list": _list, "download": _download, "verify": _verify, "path": _path, "import-hf": _import_hf}


def main(args: argparse.Namespace) -> int:
    try:
        return _ACTIONS[args.action](args)
    except (CheckpointError, W.WeightsError, FileExistsError) as exc:
        return _fail(f"error: {exc}")
