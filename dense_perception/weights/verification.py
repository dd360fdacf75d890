"""Whether a file is the checkpoint it claims to be: published hash, pinned digest, keys and values."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from ..atomic import atomic_path
from ..networks.checkpoint import CheckpointError, key_mismatch, non_finite_tensors, read_checkpoint
from ..networks.identify import Identifier, adapted
from .catalogue import CATALOGUE, HF_IMPORT_SUFFIX, WeightsEntry, catalogue_entry, checkpoint_path, download_hint, models_dir
from .digests import _hash_matches, sha256_file
from .pins import SIDECAR_NAME, _pin_is_current, _pin_key, _write_pin, read_pins


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
    ``adapt_state_dict`` (:class:`~..networks.identify.Identifier`). ``identifier`` keeps skeletons
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
    from ..networks.dpt_hf import is_hf_state_dict
    from ..networks.sra.hf import is_hf_segformer

    hf = is_hf_state_dict(state_dict) or is_hf_segformer(state_dict)
    if is_hf_state_dict(state_dict):
        notes.append("Hugging Face DPT layout (converted on load; `dense-perception weights import-hf` "
                     "saves it in the official layout)")
    elif hf:
        notes.append("Hugging Face SegFormer layout (converted on load)")
    bad = non_finite_tensors(state_dict)
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        problems.append(f"tensor {bad[0]} holds non-finite values (NaN or infinity){more}")
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

