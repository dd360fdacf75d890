"""The on-disk engine cache: keys and file names, never trusting a bad entry, atomic writes, private folder."""
from __future__ import annotations

import dataclasses
import logging
import os
import stat
from pathlib import Path

import pytest

from dense_perception.engines import cache as cache_module
from dense_perception.atomic import atomic_write_bytes
from dense_perception.engines.cache import HEADER, CacheKey, EngineCache, TimingCacheKey, file_name

KEY = CacheKey(network="edaformer_t_ade20k", weights_digest="0123456789abcdef", height=64, width=96,
               isr="[16,8,2,1]-[2,4,8]", precision="fp16", library="tensorrt", library_version="10.3.0",
               gpu_name="Orin (nvgpu)", compute_capability="8.7")
PAYLOAD = bytes(range(256)) * 40
#: A different value for every key field.
CHANGES = {"network": "edaformer_b_ade20k", "weights_digest": "fedcba9876543210", "height": 96, "width": 64,
           "isr": "[8,4,2,1]-[1,2,4]", "precision": "fp32", "library": "onnxruntime",
           "library_version": "10.4.0", "gpu_name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9",
           "batch": 2, "package_version": "0.0.0-other"}


@pytest.fixture
def cache(tmp_path: Path) -> EngineCache:
    return EngineCache(tmp_path / "engines")


def test_file_name_is_readable_and_stable() -> None:
    name = file_name(KEY)
    assert name == file_name(dataclasses.replace(KEY))
    assert name.startswith("edaformer_t_ade20k_64x96_enc16-8-2-1_dec2-4-8_fp16_tensorrt-") and name.endswith(".engine")
    assert len(name.rsplit("-", 1)[1]) == len("0123456789abcdef.engine")
    timing = file_name(TimingCacheKey("tensorrt", "10.3.0", "Orin (nvgpu)", "8.7"))
    assert timing.startswith("timing_tensorrt_Orin-nvgpu_sm8.7-")


def test_every_key_part_changes_the_file() -> None:
    assert set(CHANGES) == {f.name for f in dataclasses.fields(CacheKey)}
    names = {file_name(dataclasses.replace(KEY, **{field: value})) for field, value in CHANGES.items()}
    assert len(names) == len(CHANGES) and file_name(KEY) not in names


def test_round_trip_and_invalidation_on_each_key_part(cache: EngineCache) -> None:
    assert cache.read(KEY) is None
    path = cache.write(KEY, PAYLOAD)
    assert path == cache.path_for(KEY) and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert cache.read(KEY) == PAYLOAD
    for field, value in CHANGES.items():
        assert cache.read(dataclasses.replace(KEY, **{field: value})) is None, field
    assert cache.read(KEY) == PAYLOAD  # the others never touched it


def _corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "magic":
        data[:8] = b"NOTMAGIC"
    elif how == "version":
        data[8] = 99
    elif how == "short_header":
        data = data[: HEADER.size - 5]
    elif how == "truncated":
        data = data[: len(data) - 100]
    elif how == "trailing":
        data += b"extra"
    elif how == "checksum":
        data[-1] ^= 0xFF
    elif how == "key_json":
        data[HEADER.size] = ord("!")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how, reason", [
    ("magic", "not an engine cache entry"), ("version", "format version"), ("short_header", "truncated header"),
    ("truncated", "truncated payload"), ("trailing", "trailing bytes"), ("checksum", "checksum mismatch"),
    ("key_json", "unreadable key"),
])
def test_damaged_entries_are_never_trusted(cache: EngineCache, caplog, how: str, reason: str) -> None:
    path = cache.write(KEY, PAYLOAD)
    _corrupt(path, how)
    with caplog.at_level(logging.WARNING, logger=cache_module.__name__):
        assert cache.read(KEY) is None
    assert reason in caplog.text and "rebuilt" in caplog.text
    assert not path.exists()  # removed, so the next build writes a fresh one
    cache.write(KEY, PAYLOAD)
    assert cache.read(KEY) == PAYLOAD


def test_foreign_entry_renamed_into_place_is_refused(cache: EngineCache, caplog) -> None:
    other = dataclasses.replace(KEY, gpu_name="NVIDIA A100-SXM4-40GB", compute_capability="8.0")
    cache.write(other, b"engine for another GPU")
    os.replace(cache.path_for(other), cache.path_for(KEY))
    with caplog.at_level(logging.WARNING, logger=cache_module.__name__):
        assert cache.read(KEY) is None
    assert "made for another key" in caplog.text and "gpu_name" in caplog.text
    assert not cache.path_for(KEY).exists()


def test_crash_between_write_and_rename_leaves_nothing(cache: EngineCache, monkeypatch) -> None:
    cache.write(KEY, PAYLOAD)
    before = sorted(p.name for p in cache.directory.iterdir())

    def crash(src: str, dst: str) -> None:
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(cache_module.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        cache.write(KEY, b"new payload that never lands")
    with pytest.raises(OSError):
        cache.write(dataclasses.replace(KEY, height=128), PAYLOAD)
    monkeypatch.undo()
    assert sorted(p.name for p in cache.directory.iterdir()) == before  # no temp file, no half entry
    assert cache.read(KEY) == PAYLOAD  # the old entry is intact
    assert cache.read(dataclasses.replace(KEY, height=128)) is None


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, [b"new ", b"content"])
    assert target.read_bytes() == b"new content" and [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_folder_is_private_and_an_existing_folder_keeps_its_mode(tmp_path: Path, caplog) -> None:
    fresh = EngineCache(tmp_path / "a" / "engines").directory
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    own = tmp_path / "own"
    own.mkdir()
    own.chmod(0o755)  # readable by others, writable by the user only: usable, and left as it is
    assert EngineCache(own).directory == own
    assert stat.S_IMODE(own.stat().st_mode) == 0o755


def test_folder_writable_by_others_means_no_cache_with_one_warning(tmp_path: Path, caplog) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with caplog.at_level(logging.WARNING, logger=cache_module.__name__):
        first = EngineCache(shared)
        second = EngineCache(shared)
    assert first.directory == second.directory != shared  # a private folder of this process
    assert stat.S_IMODE(first.directory.stat().st_mode) == 0o700
    warnings = [r for r in caplog.records if "not usable" in r.getMessage()]
    assert len(warnings) == 1 and "writable by group and others" in warnings[0].getMessage()
    assert stat.S_IMODE(shared.stat().st_mode) == 0o777  # never changed
    assert first.read(KEY) is None and first.write(KEY, PAYLOAD) and first.read(KEY) == PAYLOAD


def test_foreign_files_and_symlinks_are_refused(cache: EngineCache, caplog, tmp_path: Path) -> None:
    cache.write(KEY, PAYLOAD)
    path = cache.path_for(KEY)
    path.chmod(0o666)  # writable by others: someone may have changed it
    with caplog.at_level(logging.WARNING, logger=cache_module.__name__):
        assert cache.read(KEY) is None
    assert "writable by group and others" in caplog.text and not path.exists()
    elsewhere = tmp_path / "planted.engine"
    EngineCache(tmp_path / "other").write(KEY, PAYLOAD)
    (tmp_path / "other" / path.name).rename(elsewhere)
    path.symlink_to(elsewhere)  # a valid entry, but reached through a link
    assert cache.read(KEY) is None and "symbolic link" in caplog.text
    assert elsewhere.exists()  # the link goes, never its target
    if os.geteuid() == 0:  # a file of another user (root can make one)
        cache.write(KEY, PAYLOAD)
        os.chown(path, 12345, -1)
        assert cache.read(KEY) is None and "owned by uid 12345" in caplog.text


def test_entries_and_clear(cache: EngineCache) -> None:
    second = dataclasses.replace(KEY, network="edaformer_b_ade20k")
    cache.write(KEY, PAYLOAD)
    cache.write(second, b"x")
    broken = cache.directory / "broken-0000.engine"
    broken.write_bytes(b"garbage")
    (cache.directory / ".leftover.engine.123.tmp").write_bytes(b"half")
    entries = {e.path.name: e for e in cache.entries()}
    assert entries[file_name(KEY)].key == KEY.fields()
    assert entries[file_name(KEY)].size == HEADER.size + len(cache_module.key_json(KEY)) + len(PAYLOAD)
    assert entries["broken-0000.engine"].key is None and "truncated header" in entries["broken-0000.engine"].problem
    removed = cache.clear(keep=lambda e: (e.key or {}).get("network") != "edaformer_t_ade20k")
    assert {p.name for p in removed} == {file_name(KEY), ".leftover.engine.123.tmp"}
    assert cache.read(second) == b"x"
    mode = stat.S_IMODE(cache.directory.stat().st_mode)
    cache.clear()
    # only what the cache made goes: a file of another format stays, and no mode changes
    assert [p.name for p in cache.directory.iterdir()] == ["broken-0000.engine"]
    assert stat.S_IMODE(cache.directory.stat().st_mode) == mode
