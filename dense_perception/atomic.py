"""Atomic file writes: a reader sees the old file or the whole new one, never half of it; and staged
outputs (:class:`StagedOutput`, a run's bag or folder), moved into place only when complete.

Every file the package writes for later reuse (ONNX graphs, engine-cache entries, checkpoints,
verification pins) goes through :func:`atomic_path`: the content is written to a hidden temporary
file in the target's folder (``.<name>.<random>.tmp``), which then replaces the target with
``os.replace``; on any error the temporary file is removed.
"""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _fsync_dir(folder: Path) -> None:
    """Persist a rename (best effort: not every file system lets a folder be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, mode: int | None = None, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; when the block ends normally it replaces ``target``.

    ``mode``: permissions of the new file (default: ``mkstemp``'s 0o600). ``durable``: also ``fsync``
    the file and the folder, so the new content survives a power cut.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if durable:
        _fsync_dir(target.parent)


def untrusted_reason(path: Path, folder: bool = False) -> str | None:
    """Why ``path`` must not be trusted as a cache file (or folder), as ssh judges key files: a
    symbolic link, not a regular file (folder), not owned by the current user, or writable by
    group or others. None when it may be used."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    if stat.S_ISLNK(info.st_mode):
        return "a symbolic link"
    if folder and not stat.S_ISDIR(info.st_mode):
        return "not a folder"
    if not folder and not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_uid != os.geteuid():
        return f"owned by uid {info.st_uid}, not by you (uid {os.geteuid()})"
    if info.st_mode & 0o022:
        who = {0o022: "group and others", 0o020: "group", 0o002: "others"}[info.st_mode & 0o022]
        return f"writable by {who} (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def atomic_write_bytes(path: str | os.PathLike, chunks: bytes | list[bytes], mode: int = 0o600) -> Path:
    """Write ``chunks`` to ``path`` atomically and durably; returns the path."""
    parts = [chunks] if isinstance(chunks, bytes) else chunks
    with atomic_path(path, mode=mode, durable=True) as tmp, open(tmp, "wb") as handle:
        for part in parts:
            handle.write(part)
    return Path(path)


class StagedOutput:
    """An output (a file or a folder) built under a temporary name beside its destination and moved
    there only when it is complete, so a destination never holds half an output.

    ``folder`` is a new private folder ``.<name>.<random>.partial`` in the destination's folder (same
    file system, so the final move is a rename); build the output inside it, then :meth:`commit` it,
    or :meth:`discard` everything. A process killed outright leaves only that hidden folder, which
    blocks nothing. ``OSError`` when the destination's folder cannot be written.
    """

    def __init__(self, target: str | os.PathLike) -> None:
        self.target = Path(target).absolute()
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", suffix=".partial",
                                            dir=self.target.parent))

    def commit(self, produced: str | os.PathLike) -> Path:
        """Move ``produced`` (inside :attr:`folder`) to the destination and remove the stage.

        An empty folder at the destination is replaced; anything else there is never overwritten
        (``FileExistsError``, the stage is kept so nothing is lost).
        """
        if self.target.is_dir() and not self.target.is_symlink() and not any(self.target.iterdir()):
            self.target.rmdir()
        if self.target.exists() or self.target.is_symlink():
            raise FileExistsError(f"{self.target} appeared while the run was writing; the output is "
                                  f"left in {self.folder}")
        os.rename(produced, self.target)
        _fsync_dir(self.target.parent)
        self.discard()
        return self.target

    def discard(self) -> None:
        """Remove the stage and everything in it (nothing at the destination is touched)."""
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)
