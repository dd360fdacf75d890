"""Pinned digests: ``models/.verified.json`` remembers the full SHA-256 of every verified file."""
from __future__ import annotations

import datetime as _dt
import json
import logging
from pathlib import Path
from typing import Mapping

from ..atomic import atomic_path
from .catalogue import models_dir

log = logging.getLogger(__name__)

#: Name of the pinned-digest sidecar inside the models folder.
SIDECAR_NAME = ".verified.json"


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

