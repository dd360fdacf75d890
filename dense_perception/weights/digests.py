"""SHA-256 of files, and comparison with what a catalogue publishes."""
from __future__ import annotations

import hashlib
from pathlib import Path

#: Bytes read per step while hashing or downloading.
CHUNK = 1 << 20


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

