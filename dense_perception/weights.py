"""The official checkpoints: where to get them, where they live, and whether a file is what it claims to be.

* :data:`CATALOGUE` — one read-only :class:`WeightsEntry` per network: file name, download URLs, the
  published integrity data (the DPT files carry the start of their SHA-256 in their names, torch.hub's
  convention) and an approximate size. EDAFormer's authors publish only a Google Drive *folder*
  (no file names, no hashes); those entries have no direct URL and say how to fetch them by hand.
* :func:`download` — HTTP(S) download into ``models/`` with a progress bar (tqdm, on stderr when it is a
  terminal), resume of an interrupted ``.part`` file with ``Range`` requests, SHA-256 computed while
  streaming, hash-prefix check and an atomic rename.
* :func:`verify` — exists, size, hash (published prefix; plus a full digest pinned in
  ``models/.verified.json`` after the first successful verification, so later changes are noticed),
  and a strict key/shape fit against the network (read with :func:`~.networks.read_checkpoint`,
  compared with :func:`~.networks.checkpoint.key_mismatch`). Without a network name, the file is
  identified among the catalogue networks. :func:`ensure_verified` is the cheap check before first use.
* :func:`import_hf` — a Hugging Face ``DPTForDepthEstimation`` state dict (``pytorch_model.bin`` or
  ``.safetensors``) converted to the official keys and saved as ``models/<network>_from_hf.pt``.

Every function takes the catalogue (and the models folder) as parameters with the built-in defaults,
so callers and tests can use their own without mutating anything global.
Real downloads need internet access; the URLs and sizes below are taken from the authors' READMEs
and the parameter counts, not from downloaded files (see ``shared/design/dpt.md`` section 10).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import http.client
import json
import logging
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator, Mapping

import torch

from .atomic import atomic_path
from .networks.checkpoint import CheckpointError, key_mismatch, read_checkpoint
from .networks.identify import Identifier, adapted, skeleton
from .networks.registry import WeightsEntry, available_networks, network_spec

log = logging.getLogger(__name__)

#: Environment variable that overrides the models folder (default ``./models``).
MODELS_ENV = "DENSE_PERCEPTION_MODELS"
#: Name of the pinned-digest sidecar inside the models folder.
SIDECAR_NAME = ".verified.json"
#: Suffix of files written by :func:`import_hf`: ``<network>_from_hf.pt``.
HF_IMPORT_SUFFIX = "_from_hf.pt"
#: Bytes read per step while hashing or downloading.
CHUNK = 1 << 20


def registry_catalogue() -> tuple[WeightsEntry, ...]:
    """The checkpoint entries every registered network declares (its default configuration), by name."""
    return tuple(entry for name in available_networks() for entry in network_spec(name).weights)


#: The built-in catalogue, from the network registry. Sizes: fp32 state_dict bytes (file sizes are slightly
#: larger; an mmcv file that still holds optimizer state would be larger still). Never mutated; pass your
#: own tuple to override.
CATALOGUE: tuple[WeightsEntry, ...] = registry_catalogue()


class WeightsError(Exception):
    """A checkpoint could not be obtained (download failed, bad hash, or it must be fetched by hand)."""


class DownloadError(WeightsError):
    """An HTTP or connection error, a truncated transfer or a hash mismatch."""


class ManualDownloadRequired(WeightsError):
    """The file has no direct download URL; the message says where to get it by hand."""


# --------------------------------------------------------------------------------------------------- lookup


def models_dir() -> Path:
    """The models folder: ``$DENSE_PERCEPTION_MODELS`` if set, else ``./models``."""
    return Path(os.environ.get(MODELS_ENV) or "models")


def catalogue_entry(name: str, catalogue: tuple[WeightsEntry, ...] = CATALOGUE) -> WeightsEntry:
    """The entry of network ``name``; ``ValueError`` listing the choices when there is none."""
    for entry in catalogue:
        if entry.network == name:
            return entry
    raise ValueError(f"no checkpoint is catalogued for {name!r}; choose from: "
                     f"{', '.join(e.network for e in catalogue)}")


def checkpoint_path(name: str, models: Path | None = None,
                    catalogue: tuple[WeightsEntry, ...] = CATALOGUE) -> Path:
    """Where the official file of ``name`` lives (whether or not it is there)."""
    return (models or models_dir()) / catalogue_entry(name, catalogue).file_name


def find_checkpoint(name: str, models: Path | None = None,
                    catalogue: tuple[WeightsEntry, ...] = CATALOGUE) -> Path | None:
    """The official file of ``name`` if present, else a ``<name>_from_hf.pt`` import, else None."""
    official = checkpoint_path(name, models, catalogue)
    imported = official.with_name(name + HF_IMPORT_SUFFIX)
    return next((p for p in (official, imported) if p.is_file()), None)


def download_hint(name: str, models: Path | None = None,
                  catalogue: tuple[WeightsEntry, ...] = CATALOGUE) -> str:
    """How to get ``name``'s checkpoint: the download command, or the by-hand instructions."""
    entry = catalogue_entry(name, catalogue)
    if entry.downloadable:
        return f"get it with `dense-perception weights download {name}`"
    return entry.manual_instructions(models or models_dir())


# ------------------------------------------------------------------------------------------------- hashing


def _hash_file(path: Path) -> "hashlib._Hash":
    """A SHA-256 object fed with the whole file (read in chunks); it can be continued."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    return _hash_file(path).hexdigest()


def _hash_matches(digest: str, published: str | None) -> bool:
    return published is None or digest.startswith(published.lower())


# -------------------------------------------------------------------------------------------------- download


def download(name: str, dest_dir: Path | None = None, base_url: str | None = None, progress: bool = True, *,
             catalogue: tuple[WeightsEntry, ...] = CATALOGUE, timeout: float = 60.0) -> Path:
    """Download ``name``'s checkpoint into ``dest_dir`` (default: the models folder); returns its path.

    An existing final file is returned as is (run :func:`verify` to check it). Otherwise the file is
    streamed into ``<file>.part``, resuming an existing ``.part`` with a ``Range`` request, and renamed
    into place only when complete and matching the published hash prefix. ``base_url`` replaces the
    catalogue's URLs with ``<base_url>/<file name>`` (a mirror, or a local server in tests).

    Raises:
        ManualDownloadRequired: no URL is known (EDAFormer) and no ``base_url`` was given.
        DownloadError: HTTP/connection errors (with URL and status), a truncated transfer (the ``.part``
            is kept for resuming) or a hash mismatch (the ``.part`` is deleted).
    """
    entry = catalogue_entry(name, catalogue)
    dest_dir = dest_dir or models_dir()
    final = dest_dir / entry.file_name
    if final.is_file():
        log.info("%s already present", final)
        return final
    urls = (base_url.rstrip("/") + "/" + entry.file_name,) if base_url else entry.urls
    if not urls:
        raise ManualDownloadRequired(entry.manual_instructions(dest_dir))
    dest_dir.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    failures = []
    for url in urls:
        try:
            digest = _fetch(url, part, entry, progress, timeout)
        except _Unreachable as exc:  # try the next mirror
            failures.append(str(exc))
            continue
        _accept(part, final, digest, entry, url)
        return final
    raise DownloadError("; ".join(failures))


class _Unreachable(DownloadError):
    """HTTP error status or connection failure: another mirror may work."""


def _accept(part: Path, final: Path, digest: str, entry: WeightsEntry, url: str) -> None:
    """Hash check, then atomic rename; a complete file with the wrong hash is deleted."""
    if not _hash_matches(digest, entry.sha256):
        part.unlink(missing_ok=True)
        raise DownloadError(f"{url}: sha256 {digest} does not start with the published {entry.sha256}; "
                            f"the download is corrupt or not the official file (deleted)")
    os.replace(part, final)
    log.info("saved %s (sha256 %s)", final, digest)


def _fetch(url: str, part: Path, entry: WeightsEntry, progress: bool, timeout: float) -> str:
    """Complete ``part`` from ``url`` (resuming when it exists); returns the SHA-256 of the whole file."""
    offset = part.stat().st_size if part.is_file() else 0
    digest = _hash_file(part) if offset else hashlib.sha256()
    try:
        response = _open(url, offset, timeout)
    except _RangeNotSatisfiable as exc:
        if exc.total == offset:  # the .part is already complete
            return digest.hexdigest()
        log.warning("%s: %s has %d bytes but the server has %s; starting again", url, part, offset, exc.total)
        part.unlink()
        return _fetch(url, part, entry, progress, timeout)
    with response:
        start = _start_of(response, offset, url)
        if start == 0 and offset:
            log.info("%s: the server ignored the range request; downloading from the start", url)
            digest = hashlib.sha256()
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        with open(part, "r+b" if start else "wb") as out:
            out.seek(start)
            out.truncate()
            written, broken = _stream(response, out, digest, _progress_bar(entry, start, total, progress), url)
            out.flush()
            os.fsync(out.fileno())
    if broken or (total is not None and start + written < total):
        of_total = f" of {total}" if total is not None else ""
        raise DownloadError(f"{url}: transfer truncated after {start + written}{of_total} bytes; the partial file "
                            f"{part} is kept: run the download again to resume")
    return digest.hexdigest()


class _RangeNotSatisfiable(Exception):
    def __init__(self, total: int | None) -> None:
        super().__init__(total)
        self.total = total


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    """GET ``url`` from byte ``offset``; HTTP errors become :class:`_Unreachable` naming URL and status."""
    request = urllib.request.Request(url, headers={"User-Agent": "dense-perception"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http/https URLs only)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            match = re.search(r"/(\d+)", exc.headers.get("Content-Range", "") if exc.headers else "")
            raise _RangeNotSatisfiable(int(match[1]) if match else None) from exc
        raise _Unreachable(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Unreachable(f"{url}: cannot connect ({reason})") from exc


def _start_of(response: http.client.HTTPResponse, offset: int, url: str) -> int:
    """The byte position the response body starts at (0 for a 200, ``offset`` for a matching 206)."""
    if response.status != 206:
        return 0
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    if not match or int(match[1]) != offset:
        raise DownloadError(f"{url}: asked for bytes from {offset}, the server sent "
                            f"{response.headers.get('Content-Range')!r}")
    return offset


def _stream(response: IO[bytes], out: IO[bytes], digest: "hashlib._Hash", bar: Any, url: str) -> tuple[int, bool]:
    """Copy the body to ``out``, hashing and advancing the progress bar.

    Returns the bytes written and whether the connection broke (an error rather than a clean end).
    """
    written = 0
    with bar:
        while True:
            try:
                block = response.read(CHUNK)
            except (http.client.HTTPException, OSError) as exc:
                log.debug("%s: connection lost: %s", url, exc)
                return written, True
            if not block:
                return written, False
            out.write(block)
            digest.update(block)
            written += len(block)
            bar.update(len(block))


def _progress_bar(entry: WeightsEntry, initial: int, total: int | None, progress: bool) -> Any:
    """A tqdm bar on stderr; disabled when ``progress`` is False, stderr is no terminal, or tqdm is missing."""
    enabled = progress and sys.stderr.isatty()
    try:
        from tqdm import tqdm
    except ImportError:  # a dependency, but a missing bar must not stop a download
        return _NoBar()
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=entry.file_name, file=sys.stderr, disable=not enabled, leave=True)


class _NoBar(contextlib.nullcontext):
    def update(self, _n: int) -> None:
        """Nothing to show."""


# --------------------------------------------------------------------------------------------- pinned digests


def _pin_key(path: Path, models: Path) -> str:
    """The sidecar key of ``path``: relative to the models folder when inside it, else absolute."""
    resolved, root = path.resolve(), models.resolve()
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(resolved)


def read_pins(models: Path | None = None) -> dict[str, dict]:
    """The pinned digests of ``models/.verified.json`` (empty when absent or unreadable)."""
    sidecar = (models or models_dir()) / SIDECAR_NAME
    try:
        data = json.loads(sidecar.read_text())
        files = data.get("files", {})
        return dict(files) if isinstance(files, dict) else {}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("ignoring unreadable %s: %s", sidecar, exc)
        return {}


def _write_pin(path: Path, digest: str, network: str | None, models: Path) -> None:
    """Pin ``path``'s digest (with its size, mtime and network) in the sidecar, atomically."""
    stat = path.stat()
    record = {"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "network": network,
              "verified": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    pins = read_pins(models)
    pins[_pin_key(path, models)] = record
    with atomic_path(models / SIDECAR_NAME) as tmp:
        tmp.write_text(json.dumps({"version": 1, "files": pins}, indent=1, sort_keys=True))


def _pin_is_current(path: Path, record: Mapping | None) -> bool:
    """Cheap check: a pin exists and size and modification time are unchanged since it was written."""
    if not record:
        return False
    stat = path.stat()
    return record.get("size") == stat.st_size and record.get("mtime_ns") == stat.st_mtime_ns


def pin_state(path: Path, models: Path | None = None) -> str:
    """``"yes"`` (pinned, size and mtime unchanged), ``"stale"`` (pinned, but changed since) or ``"no"``."""
    models = models or models_dir()
    record = read_pins(models).get(_pin_key(path, models))
    if _pin_is_current(path, record):
        return "yes"
    return "stale" if record else "no"


# --------------------------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify` found. ``ok`` when the file exists and no problem was found."""

    path: Path
    network: str | None = None
    exists: bool = False
    size: int | None = None
    sha256: str | None = None
    candidates: tuple[str, ...] = ()
    hf_format: bool = False
    pinned: bool = False
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.exists and not self.problems

    def summary(self) -> str:
        """One line: OK/FAILED, path, network, and the first problem or the notes."""
        head = f"{'OK' if self.ok else 'FAILED'} {self.path}"
        if self.network:
            head += f" ({self.network})"
        details = self.problems or self.notes
        return head + (": " + "; ".join(details) if details else "")


def _fit(name: str, state_dict: Mapping[str, torch.Tensor], identifier: Identifier) -> str | None:
    """``key_mismatch`` of ``state_dict`` (after the network's adaptation) against ``name``; None = fits."""
    net = identifier.net(name)
    result = adapted(net, state_dict)
    return result if isinstance(result, str) else key_mismatch(net, result)


def identify(state_dict: Mapping[str, torch.Tensor], catalogue: tuple[WeightsEntry, ...] = CATALOGUE,
             identifier: Identifier | None = None) -> tuple[str, ...]:
    """Catalogue networks whose keys and shapes ``state_dict`` fits exactly (several when they share an
    architecture, e.g. the three DPT-Hybrid networks); Hugging Face layouts are adapted by each family's
    ``adapt_state_dict`` (:class:`~.networks.identify.Identifier`). ``identifier`` keeps skeletons
    between calls of one verification."""
    names = [e.network for e in catalogue]
    fits = (identifier or Identifier(names)).fits(state_dict)
    return tuple(n for n in fits if n in names)


def verify(path: Path | str, name: str | None = None, *, models: Path | None = None,
           catalogue: tuple[WeightsEntry, ...] = CATALOGUE, pin: bool = True, repin: bool = False) -> VerifyReport:
    """Check that ``path`` is a complete, unchanged checkpoint of network ``name`` (identified when None).

    Checks, in order: the file exists; its SHA-256 starts with the published prefix (for a file carrying
    the catalogue's file name, or any catalogued prefix when ``name`` is None); it equals the digest
    pinned in ``models/.verified.json`` by an earlier verification; it reads safely
    (:func:`read_checkpoint`) and fits the network's keys and shapes strictly (Hugging Face DPT layouts
    via the network's ``adapt_state_dict``). A fully successful verification pins the digest (``pin``);
    ``repin`` replaces a pin that no longer matches (after replacing a file on purpose).
    """
    path, models = Path(path), models or models_dir()
    entry = catalogue_entry(name, catalogue) if name else None
    if not path.is_file():
        hint = f"; {download_hint(name, models, catalogue)}" if name else ""
        return VerifyReport(path, name, problems=(f"missing: {path} does not exist{hint}",))
    size, digest = path.stat().st_size, sha256_file(path)
    problems, notes = [], []
    by_hash = _check_published_hash(path, digest, entry, catalogue, problems, notes)
    record = read_pins(models).get(_pin_key(path, models))
    pinned = _check_pin(digest, record, repin, problems)
    network, candidates, hf = _check_keys(path, name or by_hash, catalogue, problems, notes)
    if entry and entry.approx_size and size < 0.9 * entry.approx_size:
        notes.append(f"{size} bytes, less than the expected ≈ {entry.approx_size}")
    if not problems and pin and (not pinned or repin or not _pin_is_current(path, record)):
        _write_pin(path, digest, network, models)
        if not pinned:
            notes.append(f"sha256 {digest} pinned in {models / SIDECAR_NAME}")
        pinned = True
    return VerifyReport(path, network, True, size, digest, candidates, hf, pinned, tuple(problems), tuple(notes))


def _check_published_hash(path: Path, digest: str, entry: WeightsEntry | None,
                          catalogue: tuple[WeightsEntry, ...], problems: list[str], notes: list[str]) -> str | None:
    """Compare with published hash prefixes; returns the network a prefix identifies, if any."""
    if entry is not None and entry.sha256:
        if path.name.endswith(HF_IMPORT_SUFFIX):
            notes.append("converted from Hugging Face weights: no published hash applies")
        elif path.name != entry.file_name:
            notes.append(f"published hash not checked: the file is not named {entry.file_name}")
        elif _hash_matches(digest, entry.sha256):
            notes.append(f"sha256 matches the published prefix {entry.sha256}")
        else:
            problems.append(f"sha256 {digest[:16]}… does not start with the published {entry.sha256}: "
                            f"the file is truncated, corrupt or not the official {entry.file_name}")
        return None
    for other in catalogue:
        if other.sha256 and _hash_matches(digest, other.sha256):
            notes.append(f"sha256 matches the published prefix {other.sha256} of {other.file_name}")
            return other.network
        if other.sha256 and path.name == other.file_name:
            problems.append(f"sha256 {digest[:16]}… does not start with the published {other.sha256} "
                            f"of {other.file_name}: the file is truncated, corrupt or not the official file")
    return None


def _check_pin(digest: str, record: Mapping | None, repin: bool, problems: list[str]) -> bool:
    """True when a pinned digest exists and matches; a mismatch is a problem unless ``repin``."""
    if not record:
        return False
    if record.get("sha256") == digest:
        return True
    if not repin:
        problems.append(f"changed since it was verified on {record.get('verified', '?')} (pinned sha256 "
                        f"{str(record.get('sha256'))[:16]}…, now {digest[:16]}…); if you replaced it on "
                        f"purpose, verify it again with --repin")
    return False


def _check_keys(path: Path, name: str | None, catalogue: tuple[WeightsEntry, ...], problems: list[str],
                notes: list[str]) -> tuple[str | None, tuple[str, ...], bool]:
    """Read the file and fit it to ``name`` (or identify it); returns (network, candidates, is HF layout)."""
    try:
        state_dict = read_checkpoint(path).state_dict
    except CheckpointError as exc:
        problems.append(f"not a usable checkpoint: {exc}")
        return name, (), False
    from .networks.dpt_hf import is_hf_state_dict
    from .networks.sra.hf import is_hf_segformer

    hf = is_hf_state_dict(state_dict) or is_hf_segformer(state_dict)
    if is_hf_state_dict(state_dict):
        notes.append("Hugging Face DPT layout (converted on load; `dense-perception weights import-hf` "
                     "saves it in the official layout)")
    elif hf:
        notes.append("Hugging Face SegFormer layout (converted on load)")
    identifier = Identifier([e.network for e in catalogue])
    if name is not None:
        problem = _fit(name, state_dict, identifier)
        if problem is None:
            return name, (name,), hf
        actual = identify(state_dict, catalogue, identifier)
        fits = f"; its weights fit {', '.join(actual)}" if actual else ""
        problems.append(f"not a checkpoint of {name}: {problem}{fits}")
        return name, actual, hf
    candidates = identify(state_dict, catalogue, identifier)
    if not candidates:
        problems.append("its keys fit none of the catalogued networks: "
                        + ", ".join(e.network for e in catalogue))
        return None, (), hf
    by_file = [e.network for e in catalogue if e.network in candidates and e.file_name == path.name]
    if len(candidates) == 1 or by_file:
        return (by_file or list(candidates))[0], candidates, hf
    notes.append(f"the keys fit {', '.join(candidates)} (same architecture); name it with --network")
    return None, candidates, hf


def ensure_verified(path: Path | str, name: str, *, models: Path | None = None,
                    catalogue: tuple[WeightsEntry, ...] = CATALOGUE) -> VerifyReport:
    """Verification before use: instant when a pin of this file (same size and mtime) exists, else a full
    :func:`verify` (which pins it). Raises :class:`CheckpointError` with the problems when it fails."""
    path, models = Path(path), models or models_dir()
    record = read_pins(models).get(_pin_key(path, models)) if path.is_file() else None
    if record is not None and _pin_is_current(path, record) and record.get("network") == name:
        return VerifyReport(path, name, True, record["size"], record["sha256"], (name,), pinned=True)
    report = verify(path, name, models=models, catalogue=catalogue)
    if not report.ok:
        raise CheckpointError(f"{path}: " + "; ".join(report.problems))
    return report


def install(path: Path | str, name: str, *, models: Path | None = None,
            catalogue: tuple[WeightsEntry, ...] = CATALOGUE) -> Path:
    """Copy a verified file into the models folder under its catalogue name; returns the new path."""
    import shutil

    models = models or models_dir()
    target = checkpoint_path(name, models, catalogue)
    if Path(path).resolve() == target.resolve():
        return target
    if target.exists():
        raise FileExistsError(f"{target} exists already; remove it first to replace it")
    with atomic_path(target) as tmp:
        shutil.copyfile(path, tmp)
    return target


# ---------------------------------------------------------------------------------------------- HF import


def read_hf_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a HF ``pytorch_model.bin`` (read with ``weights_only``) or ``.safetensors`` file."""
    return read_checkpoint(path).state_dict


def import_hf(path: Path | str, name: str | None = None, dest: Path | None = None, *,
              models: Path | None = None) -> Path:
    """Convert a HF ``DPTForDepthEstimation`` state dict to the official DPT layout and save it.

    ``name`` defaults to ``dpt_hybrid_midas`` or ``dpt_large_midas`` by the keys (hybrid when there is a
    ResNet backbone); the converted weights must load strictly into it. The result is written with
    ``torch.save`` to ``dest`` (default ``models/<name>_from_hf.pt``) and its digest pinned.

    Raises:
        CheckpointError: unreadable file, not a HF DPT state dict, or weights that do not fit ``name``.
    """
    from .networks.dpt_hf import convert_hf_state_dict, is_hf_state_dict

    path, models = Path(path), models or models_dir()
    state_dict = read_hf_state_dict(path)
    if not is_hf_state_dict(state_dict):
        raise CheckpointError(f"{path}: not a Hugging Face DPTForDepthEstimation state dict (its keys do not all "
                              f"start with dpt., neck. or head.); an official file needs no import — verify it")
    try:
        converted = convert_hf_state_dict(state_dict)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    hybrid = any(".patch_embed.backbone." in k for k in converted)
    name = name or ("dpt_hybrid_midas" if hybrid else "dpt_large_midas")
    if network_spec(name).family != "dpt":
        raise ValueError(f"{name} is not a DPT network; Hugging Face import is for DPT only")
    problem = key_mismatch(skeleton(name), converted)
    if problem:
        raise CheckpointError(f"{path}: the converted weights do not fit {name}: {problem}")
    dest = Path(dest) if dest else models / (name + HF_IMPORT_SUFFIX)
    with atomic_path(dest) as tmp:
        torch.save(dict(converted), tmp)
    _write_pin(dest, sha256_file(dest), name, models)  # its keys were checked just above
    return dest


def present(models: Path | None = None, catalogue: tuple[WeightsEntry, ...] = CATALOGUE) -> Iterator[tuple[str, Path]]:
    """(network, path) for every catalogued network with a file in the models folder."""
    for entry in catalogue:
        found = find_checkpoint(entry.network, models, catalogue)
        if found is not None:
            yield entry.network, found


__all__ = [
    "CATALOGUE", "DownloadError", "ManualDownloadRequired", "VerifyReport", "WeightsEntry", "WeightsError",
    "catalogue_entry", "checkpoint_path", "download", "download_hint", "ensure_verified", "find_checkpoint",
    "identify", "import_hf", "install", "models_dir", "pin_state", "present", "read_hf_state_dict", "read_pins",
    "sha256_file", "verify",
]
