"""The on-disk engine cache: built engines (and TensorRT timing caches) in a folder of the user's.

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
mid-write leaves at most a hidden ``.*.tmp`` file, never a half entry. A new folder is made private to the user
(``0o700``); the mode of an existing folder is never changed, and a folder or file that is someone
else's or writable by others is not trusted (:func:`untrusted_reason`, as ssh judges key files).
ONNX graphs (:mod:`.export`) get a manifest (size, SHA-256) written after them and checked before
use (:func:`write_manifest`, :func:`manifest_problem`); ``engines clear`` removes only artefacts with
a manifest and entries of this format.

:func:`dense_perception.atomic.atomic_write_bytes` (the package's one atomic-write helper) writes the entries.
"""
from __future__ import annotations

import atexit
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Union

from .. import __version__
from ..atomic import atomic_write_bytes, untrusted_reason

log = logging.getLogger(__name__)

#: Environment variable naming the engine cache folder (overrides the default below).
CACHE_ENV = "DENSE_PERCEPTION_CACHE"


def default_engine_dir() -> Path:
    """Where ONNX graphs and TensorRT engines are cached unless told otherwise: an absolute folder of
    the user's, never the working directory -- ``$DENSE_PERCEPTION_CACHE``, else
    ``$XDG_CACHE_HOME/dense_perception/engines``, else ``~/.cache/dense_perception/engines``."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base).absolute() / "dense_perception" / "engines"

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


#: Suffix of the manifest written after each artefact the cache creates (graphs; entries carry theirs).
MANIFEST_SUFFIX = ".manifest.json"
#: Folders that could not be used as caches in this process -> the private folder used instead.
#: A process-lifetime resource (like a logger): one warning and one fallback per folder.
_FALLBACKS: dict[Path, Path] = {}


def ensure_private_dir(path: str | os.PathLike | None) -> Path:
    """The cache folder ``path`` (None: :func:`default_engine_dir`), created private (0o700) when
    missing. The mode of an existing folder is never changed.

    A folder that cannot be created or written, or that is not to be trusted (:func:`untrusted_reason`:
    someone else's, or writable by others), is not used: the run goes on without caching, in a
    private temporary folder removed when the process ends, with one warning per folder.
    """
    folder = (Path(path) if path is not None else default_engine_dir()).absolute()
    if folder in _FALLBACKS:
        return _FALLBACKS[folder]
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        problem = untrusted_reason(folder, folder=True)
        if problem is None and not os.access(folder, os.W_OK | os.X_OK):
            problem = "not writable"
    except OSError as exc:
        problem = exc.strerror or str(exc)
    if problem is None:
        return folder
    fallback = Path(tempfile.mkdtemp(prefix="dense_perception-nocache-"))
    atexit.register(shutil.rmtree, fallback, True)
    _FALLBACKS[folder] = fallback
    log.warning("engine cache %s is not usable (%s): running without a cache (graphs and engines are "
                "built in %s and removed at exit); set $%s to a folder of your own", folder, problem,
                fallback, CACHE_ENV)
    return fallback


@dataclass(frozen=True)
class Manifest:
    """What the cache wrote beside an artefact it created: its size and SHA-256."""

    size: int
    sha256: str
    kind: str
    version: str = __version__


def manifest_path(artefact: Path) -> Path:
    return artefact.with_name(artefact.name + MANIFEST_SUFFIX)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(artefact: Path, kind: str) -> Path:
    """Write ``artefact``'s manifest (after the artefact itself, atomically); returns its path."""
    manifest = Manifest(artefact.stat().st_size, file_sha256(artefact), kind)
    return atomic_write_bytes(manifest_path(artefact), json.dumps(dataclasses.asdict(manifest)).encode())


def manifest_problem(artefact: Path) -> str | None:
    """Why ``artefact`` must not be used (None when it may): untrusted file or manifest, no manifest
    (not made by the cache), or a size or checksum that differs from the manifest."""
    problem = untrusted_reason(artefact)
    if problem is not None:
        return f"the file is {problem}"
    sidecar = manifest_path(artefact)
    problem = untrusted_reason(sidecar)
    if problem is not None:
        return "no manifest (not made by this cache)" if problem == "missing" else f"its manifest is {problem}"
    try:
        manifest = Manifest(**json.loads(sidecar.read_text("utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        return f"unreadable manifest ({exc})"
    size = artefact.stat().st_size
    if size != manifest.size:
        return f"size {size} differs from the manifest's {manifest.size}"
    if file_sha256(artefact) != manifest.sha256:
        return "checksum mismatch with its manifest (corrupt)"
    return None


def remove_artefact(artefact: Path) -> None:
    """Delete an artefact and its manifest (missing ones are fine)."""
    for path in (manifest_path(artefact), artefact):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@dataclass(frozen=True)
class EntryHeader:
    """The fixed header and the key of an entry file, as read back."""

    key: dict[str, Any]
    payload_length: int
    checksum: bytes
    payload_offset: int


#: Header problems of files that are not this cache's entries at all (``clear`` leaves them).
_FOREIGN_PROBLEMS = ("truncated header", "not an engine cache entry")


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

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        self.directory = ensure_private_dir(directory)

    def path_for(self, key: AnyKey) -> Path:
        return self.directory / file_name(key)

    def read(self, key: AnyKey) -> bytes | None:
        """The payload stored for ``key``, or None (missing; or untrustworthy: logged and removed)."""
        path = self.path_for(key)
        if not path.exists() and not path.is_symlink():
            log.debug("%s: not cached yet", path)
            return None
        try:
            problem = untrusted_reason(path)
            if problem is not None:
                raise EntryError(f"refused: the file is {problem}")
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
        """Remove what this cache created -- entries of its format (those for which ``keep`` is
        false) and its leftover temporary files -- never a file of someone else's or of another
        format; returns the removed paths. No folder's mode is changed."""
        removed = []
        for entry in self.entries():
            foreign = entry.key is None and (entry.problem or "").startswith(_FOREIGN_PROBLEMS)
            if keep(entry) or foreign or untrusted_reason(entry.path) is not None:
                continue
            with contextlib.suppress(FileNotFoundError):
                entry.path.unlink()
            removed.append(entry.path)
        for tmp in self.directory.glob(".*.tmp"):
            if untrusted_reason(tmp) is None:
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
