"""The on-disk engine cache: built engines (and TensorRT timing caches) under ``models/engines/``.

One entry per :class:`CacheKey` -- network, weights digest, input size, batch, ISR setting, precision,
backend library and version, GPU name and compute capability, package version. The file name is a
readable label plus a short hash of the *whole* key, so any change of any key part selects another file.

Entry format (little-endian)::

    magic "DPENGINE" | format version u32 | key length u32 | payload length u64 | sha256(payload) 32 B
    key JSON (UTF-8, sorted keys) | payload

:meth:`EngineCache.read` trusts nothing: a short header, another magic or format version, a key that
differs from the one asked for (a renamed or foreign file), a truncated or over-long payload or a checksum
mismatch are logged with the reason, the entry is removed, and ``None`` tells the caller to rebuild.
:meth:`EngineCache.write` is atomic (temporary file in the same folder, ``fsync``, ``os.replace``): a crash
mid-write leaves at most a hidden ``.*.tmp`` file, never a half entry. The folder is private to the user
(``0o700``); an existing folder open to group or others is warned about and tightened.

:func:`dense_perception.atomic.atomic_write_bytes` (the package's one atomic-write helper) writes the entries.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Union

from .. import __version__
from ..atomic import atomic_write_bytes

log = logging.getLogger(__name__)

#: Where engines live unless told otherwise (relative to the working directory, like ``models/``).
DEFAULT_DIR = Path("models") / "engines"
MAGIC = b"DPENGINE"
FORMAT_VERSION = 1
#: magic, format version, key length, payload length, sha256 of the payload
HEADER = struct.Struct("<8sIIQ32s")
SUFFIX = ".engine"
#: Upper bound on the key JSON length; anything larger is not one of our headers.
MAX_KEY_BYTES = 1 << 16
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe(text: str) -> str:
    """File-name-safe form of a label part (``NVIDIA GeForce RTX 4090`` -> ``NVIDIA-GeForce-RTX-4090``)."""
    return _UNSAFE.sub("-", text).strip("-") or "none"


@dataclass(frozen=True)
class CacheKey:
    """Everything a built engine depends on; two keys share a file only when every field is equal."""

    network: str
    weights_digest: str  # export.weights_digest(net): ties the engine to the weights it holds
    height: int
    width: int
    isr: str  # ISRSetting text, "" for networks without ISR
    precision: str  # "fp32" or "fp16"
    library: str  # "tensorrt", "onnxruntime", ...
    library_version: str
    gpu_name: str  # "" on CPU
    compute_capability: str  # "8.7"; "" on CPU
    batch: int = 1
    package_version: str = __version__  # the exporter that made the graph it was built from

    def fields(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def label(self) -> str:
        """Readable file-name prefix: network, size, ISR slug, precision, library."""
        from ..networks.isr import ISRSetting

        isr = ISRSetting.read(self.isr).slug if self.isr else "noisr"
        batch = f"_b{self.batch}" if self.batch != 1 else ""
        return f"{_safe(self.network)}_{self.height}x{self.width}_{isr}_{self.precision}{batch}_{_safe(self.library)}"


@dataclass(frozen=True)
class TimingCacheKey:
    """A TensorRT timing cache: valid for one library version on one GPU model."""

    library: str
    library_version: str
    gpu_name: str
    compute_capability: str

    def fields(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def label(self) -> str:
        return f"timing_{_safe(self.library)}_{_safe(self.gpu_name)}_sm{_safe(self.compute_capability)}"


AnyKey = Union[CacheKey, TimingCacheKey]


def key_json(key: AnyKey) -> bytes:
    """Canonical JSON of a key (sorted keys, no spaces)."""
    return json.dumps(key.fields(), sort_keys=True, separators=(",", ":")).encode()


def file_name(key: AnyKey) -> str:
    """``<label>-<first 16 hex of sha256(key JSON)>.engine``."""
    return f"{key.label}-{hashlib.sha256(key_json(key)).hexdigest()[:16]}{SUFFIX}"


def ensure_private_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` with mode 0o700; warn about and tighten an existing folder open to others."""
    folder = Path(path)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(folder.stat().st_mode)
    if mode & 0o077:
        log.warning("%s is accessible to group/others (mode %o); engine files are executable code for the GPU "
                    "and are restricted to the user: setting mode 700", folder, mode)
        try:
            folder.chmod(0o700)
        except OSError as exc:
            log.warning("cannot change the mode of %s (%s); fix it by hand", folder, exc)
    return folder


@dataclass(frozen=True)
class EntryHeader:
    """The fixed header and the key of an entry file, as read back."""

    key: dict[str, Any]
    payload_length: int
    checksum: bytes
    payload_offset: int


class EntryError(ValueError):
    """An entry file that must not be trusted; the message says why."""


def read_header(path: Path) -> EntryHeader:
    """Header and key of an entry file (no payload check); :class:`EntryError` when malformed."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        raw = handle.read(HEADER.size)
        if len(raw) < HEADER.size:
            raise EntryError(f"truncated header ({len(raw)} of {HEADER.size} bytes)")
        magic, version, key_length, payload_length, checksum = HEADER.unpack(raw)
        if magic != MAGIC:
            raise EntryError(f"not an engine cache entry (magic {magic!r})")
        if version != FORMAT_VERSION:
            raise EntryError(f"entry format version {version}, this package reads {FORMAT_VERSION}")
        if key_length > MAX_KEY_BYTES:
            raise EntryError(f"implausible key length {key_length}")
        key_raw = handle.read(key_length)
    if len(key_raw) < key_length:
        raise EntryError(f"truncated key ({len(key_raw)} of {key_length} bytes)")
    try:
        key = json.loads(key_raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EntryError(f"unreadable key ({exc})") from None
    if not isinstance(key, dict):
        raise EntryError("unreadable key (not a JSON object)")
    offset = HEADER.size + key_length
    expected = offset + payload_length
    if size != expected:
        what = "truncated" if size < expected else "trailing bytes after the"
        raise EntryError(f"{what} payload: file has {size} bytes, header says {expected}")
    return EntryHeader(key, payload_length, checksum, offset)


def _differences(found: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    return [f"{name}: entry has {found.get(name)!r}, wanted {wanted.get(name)!r}"
            for name in sorted(set(found) | set(wanted)) if found.get(name) != wanted.get(name)]


@dataclass(frozen=True)
class CacheEntry:
    """One file of the cache as :meth:`EngineCache.entries` lists it."""

    path: Path
    size: int
    key: dict[str, Any] | None  # None when the header is unreadable
    problem: str | None = None  # why the entry would be rebuilt (header-level checks only)


class EngineCache:
    """Entries in one private folder (see the module docstring). Holds no state besides the folder."""

    def __init__(self, directory: str | os.PathLike = DEFAULT_DIR) -> None:
        self.directory = ensure_private_dir(directory)

    def path_for(self, key: AnyKey) -> Path:
        return self.directory / file_name(key)

    def read(self, key: AnyKey) -> bytes | None:
        """The payload stored for ``key``, or None (missing; or untrustworthy: logged and removed)."""
        path = self.path_for(key)
        if not path.exists():
            log.debug("%s: not cached yet", path)
            return None
        try:
            header = read_header(path)
            differences = _differences(header.key, key.fields())
            if differences:
                raise EntryError(f"made for another key ({'; '.join(differences)})")
            with path.open("rb") as handle:
                handle.seek(header.payload_offset)
                payload = handle.read(header.payload_length)
            if len(payload) != header.payload_length:
                raise EntryError(f"truncated payload ({len(payload)} of {header.payload_length} bytes)")
            if hashlib.sha256(payload).digest() != header.checksum:
                raise EntryError("checksum mismatch (corrupt payload)")
        except (EntryError, OSError) as exc:
            self._discard(path, str(exc))
            return None
        return payload

    def write(self, key: AnyKey, payload: bytes) -> Path:
        """Store ``payload`` for ``key`` atomically; returns the entry's path."""
        key_raw = key_json(key)
        header = HEADER.pack(MAGIC, FORMAT_VERSION, len(key_raw), len(payload), hashlib.sha256(payload).digest())
        path = atomic_write_bytes(self.path_for(key), [header, key_raw, payload])
        log.debug("cached %s (%d bytes)", path, len(payload))
        return path

    def remove(self, key: AnyKey) -> bool:
        """Delete the entry for ``key``; True when there was one."""
        try:
            self.path_for(key).unlink()
        except FileNotFoundError:
            return False
        return True

    def entries(self) -> list[CacheEntry]:
        """Every ``*.engine`` file with its key and size (payload checksums are not verified here)."""
        found = []
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            try:
                found.append(CacheEntry(path, path.stat().st_size, read_header(path).key))
            except (EntryError, OSError) as exc:
                found.append(CacheEntry(path, path.stat().st_size if path.exists() else 0, None, str(exc)))
        return found

    def clear(self, keep: Callable[[CacheEntry], bool] = lambda entry: False) -> list[Path]:
        """Remove entries (those for which ``keep`` is false) and leftover temporary files; the removed paths."""
        removed = []
        for entry in self.entries():
            if not keep(entry):
                with contextlib.suppress(FileNotFoundError):
                    entry.path.unlink()
                removed.append(entry.path)
        for tmp in self.directory.glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            removed.append(tmp)
        return removed

    def _discard(self, path: Path, reason: str) -> None:
        log.warning("engine cache: %s: %s; removing it, it will be rebuilt", path, reason)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def __iter__(self) -> Iterator[CacheEntry]:
        return iter(self.entries())
