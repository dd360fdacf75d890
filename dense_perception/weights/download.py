"""Downloading a catalogued checkpoint into the models folder."""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import stat
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO, Any

from .catalogue import CATALOGUE, DownloadError, ManualDownloadRequired, WeightsEntry, catalogue_entry, models_dir
from .digests import CHUNK, _hash_matches

log = logging.getLogger(__name__)


#: Folder of the models folder where partial downloads live, private to the user (0700).
PARTIAL_DIR = ".downloads"
#: Hosts plain ``http`` is accepted from: this machine (a local mirror; tests).
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def download(name: str, dest_dir: Path | None = None, base_url: str | None = None, progress: bool = True, *,
             catalogue: tuple[WeightsEntry, ...] = CATALOGUE, timeout: float = 60.0) -> Path:
    """Download ``name``'s checkpoint into ``dest_dir`` (default: the models folder); returns its path.

    A file already there is verified first (:func:`~.verification.ensure_verified`: its pin, else a
    full check) and returned when it passes. Otherwise the file is streamed over HTTPS into
    ``<dest_dir>/.downloads/<file>.part`` -- a folder private to the user, the partial file created
    exclusively there and never reached through a symbolic link -- resuming an earlier partial file
    with a ``Range`` request, and renamed into place only when complete and matching the catalogue's
    SHA-256 (whole, or the published prefix where only that is known). ``base_url`` replaces the
    catalogue's URLs with ``<base_url>/<file name>`` (a mirror). Plain ``http`` is refused, also in
    redirects, except from the loopback address.

    Raises:
        ManualDownloadRequired: no URL is known (EDAFormer) and no ``base_url`` was given.
        DownloadError: a refused URL, HTTP/connection errors (with URL and status), a truncated transfer
            (the partial file is kept for resuming), a hash mismatch (it is deleted), a present file that
            fails verification, or a partial-download folder that is not private.
    """
    from ..networks.checkpoint import CheckpointError
    from .verification import ensure_verified

    entry = catalogue_entry(name, catalogue)
    dest_dir = dest_dir or models_dir()
    final = dest_dir / entry.file_name
    if final.exists() or final.is_symlink():
        try:
            ensure_verified(final, name, models=dest_dir, catalogue=catalogue)
        except CheckpointError as exc:
            raise DownloadError(f"{final} is present but fails verification: {exc}; remove it to download "
                                "it again") from None
        log.info("%s already present and verified", final)
        return final
    urls = (base_url.rstrip("/") + "/" + entry.file_name,) if base_url else entry.urls
    if not urls:
        raise ManualDownloadRequired(entry.manual_instructions(dest_dir))
    for url in urls:
        check_url(url)
    part = _partial_dir(dest_dir) / (entry.file_name + ".part")
    failures = []
    for url in urls:
        try:
            digest = _fetch(url, part, entry, progress, timeout)
        except _Unreachable as exc:  # try the next mirror
            failures.append(str(exc))
            if part.is_file() and not part.is_symlink() and part.stat().st_size == 0:
                part.unlink()  # nothing to resume
            continue
        _accept(part, final, digest, entry, url)
        return final
    raise DownloadError("; ".join(failures))


def check_url(url: str) -> None:
    """:class:`DownloadError` unless ``url`` is https (or http to the loopback address)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS):
        return
    raise DownloadError(f"{url}: refused: checkpoints are downloaded over https only (plain http only "
                        "from this machine's loopback address)")


class _HttpsOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a URL :func:`check_url` accepts."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        check_url(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _partial_dir(dest_dir: Path) -> Path:
    """``<dest_dir>/.downloads``, created 0700; refused unless it is the user's and private."""
    from ..atomic import untrusted_reason

    folder = dest_dir / PARTIAL_DIR
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    problem = untrusted_reason(folder, folder=True)
    if problem is None and stat.S_IMODE(folder.stat().st_mode) & 0o077:
        problem = f"open to others (mode {stat.S_IMODE(folder.stat().st_mode):o})"
    if problem is not None:
        raise DownloadError(f"{folder}: refusing to download into it: it is {problem}")
    return folder


def _open_partial(part: Path) -> int:
    """A descriptor of ``part`` for reading and writing, created if missing; never through a symbolic
    link (one found there is removed) and only a regular file of the user's."""
    from ..atomic import untrusted_reason

    problem = untrusted_reason(part)
    if problem not in (None, "missing"):
        log.warning("%s is %s; removing it and starting the download afresh", part, problem)
        part.unlink()
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    if not part.exists():
        flags |= os.O_EXCL
    return os.open(part, flags, 0o600)


class _Unreachable(DownloadError):
    """HTTP error status or connection failure: another mirror may work."""


def _accept(part: Path, final: Path, digest: str, entry: WeightsEntry, url: str) -> None:
    """Hash check, then atomic rename; a complete file with the wrong hash is deleted."""
    if not _hash_matches(digest, entry.sha256):
        part.unlink(missing_ok=True)
        what = "is not" if entry.sha256 and len(entry.sha256) == 64 else "does not start with"
        raise DownloadError(f"{url}: sha256 {digest} {what} the catalogue's {entry.sha256}; "
                            f"the download is corrupt or not the official file (deleted)")
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, final)
    log.info("saved %s (sha256 %s)", final, digest)


def _fetch(url: str, part: Path, entry: WeightsEntry, progress: bool, timeout: float) -> str:
    """Complete ``part`` from ``url`` (resuming what it holds); returns the SHA-256 of the whole file."""
    fd = _open_partial(part)
    with os.fdopen(fd, "r+b") as out:
        offset = os.fstat(out.fileno()).st_size
        digest = _hash_open_file(out) if offset else hashlib.sha256()
        try:
            response = _open(url, offset, timeout)
        except _RangeNotSatisfiable as exc:
            if exc.total == offset:  # the partial file is already complete
                return digest.hexdigest()
            log.warning("%s: %s has %d bytes but the server has %s; starting again", url, part, offset, exc.total)
            out.truncate(0)
            offset, digest = 0, hashlib.sha256()
            response = _open(url, 0, timeout)
        with response:
            start = _start_of(response, offset, url)
            if start == 0 and offset:
                log.info("%s: the server ignored the range request; downloading from the start", url)
                digest = hashlib.sha256()
            length = response.headers.get("Content-Length")
            total = start + int(length) if length is not None else None
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


def _hash_open_file(handle: IO[bytes]) -> "hashlib._Hash":
    """SHA-256 of an open file from its start (the position is left at its end)."""
    digest = hashlib.sha256()
    handle.seek(0)
    for block in iter(lambda: handle.read(CHUNK), b""):
        digest.update(block)
    return digest


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
        return urllib.request.build_opener(_HttpsOnlyRedirects).open(request, timeout=timeout)
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

