"""Writing without losing data: staged outputs, compression, declared topics, write failures
(disk full, unwritable folder) and what a failed run leaves. The writers are driven through the
runner's loop with a stand-in processor (no network: fast); every output is reopened with rosbags."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import Reader
from ruamel.yaml import YAML

from bag_fixtures import gradient_image
from dense_perception import atomic
from dense_perception.cli import OutputError
from dense_perception.commands.run import check_output, output_format
from dense_perception.io.sources import CameraInfoData, Frame
from dense_perception.io.writers import BagWriter, FilesWriter, FrameOutputs
from dense_perception.pipeline.cloud import build_cloud
from dense_perception.runner import Interrupts, run_frames

NS = 1_000_000_000
K = (40.0, 0.0, 15.5, 0.0, 42.0, 11.5, 0.0, 0.0, 1.0)


class FakeSource:
    """``count`` frames of 24x32 (a list-backed :class:`~dense_perception.io.sources.Source`)."""

    kind = "folder"
    path = Path("fake")

    def __init__(self, count: int, size: tuple[int, int] = (24, 32)) -> None:
        self.items = [Frame(gradient_image(*size, i), i * NS // 10, "cam", None, i) for i in range(count)]

    def expected_frames(self) -> int:
        return len(self.items)

    def frames(self):
        yield from self.items

    def describe(self) -> str:
        return "fake"


class FakeProcessor:
    """Outputs of a frame without networks: depth from the image, labels from its red channel;
    ``cloud`` False gives relative depth (no cloud), as the MiDaS networks do."""

    def __init__(self, cloud: bool = True, stop_after: int | None = None,
                 interrupts: Interrupts | None = None) -> None:
        self.cloud, self.stop_after, self.interrupts, self.done = cloud, stop_after, interrupts, 0

    def process(self, frame: Frame) -> FrameOutputs:
        rgb = frame.rgb
        depth = 1.0 + rgb[..., 1].astype(np.float32) / 64.0
        labels = (rgb[..., 0] // 32).astype(np.uint8)
        camera = CameraInfoData(rgb.shape[1], rgb.shape[0], K, (0.0,) * 5, "plumb_bob")
        make_cloud = (lambda: build_cloud(depth, np.asarray(K).reshape(3, 3), rgb=rgb, labels=labels)) \
            if self.cloud else None
        self.done += 1
        if self.interrupts is not None and self.done == self.stop_after:
            self.interrupts.handle(15, None)  # SIGTERM while this frame is processed
        return FrameOutputs(frame, camera, depth, "metric" if self.cloud else "relative_inverse",
                            rgb.copy(), labels, rgb.copy(), make_cloud)

    def notes(self) -> dict[str, str]:
        return {"dense_perception.seg_weights": "untrained (seed 0), weights sha256 0123",
                "dense_perception.isr_served": "[8,4,2,1]-[1,2,4]"}


def topic_counts(path: Path) -> dict[str, int]:
    with AnyReader([path]) as reader:
        return {c.topic: c.msgcount for c in reader.connections}


def no_stage_left(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".partial")]


def test_out_is_exactly_the_path_given(tmp_path: Path) -> None:
    single = tmp_path / "r.mcap"
    run_frames(FakeSource(2), BagWriter(single, output_format(single, None)), FakeProcessor(), progress=False)
    assert single.is_file() and no_stage_left(tmp_path)  # not r.mcap/r.mcap.mcap
    assert topic_counts(single)["/camera/image"] == 2
    assert b"dense_perception.seg_weights" in single.read_bytes()  # metadata travels inside
    db3 = tmp_path / "r.db3"
    assert output_format(db3, None) == "sqlite3"
    run_frames(FakeSource(1), BagWriter(db3, "sqlite3"), FakeProcessor(), progress=False)
    assert db3.is_file() and topic_counts(db3)["/seg/labels"] == 1
    with pytest.raises(ValueError, match="names a mcap file but --format is sqlite3"):
        output_format(single, "sqlite3")


def test_mcap_chunks_are_compressed_and_metadata_says_what_ran(tmp_path: Path) -> None:
    sizes = {}
    for compression in ("none", "zstd", "lz4"):
        out = tmp_path / compression
        summary = run_frames(FakeSource(4, (96, 128)), BagWriter(out, "mcap", compression=compression),
                             FakeProcessor(), progress=False)
        assert summary.counts["/points"] == 4
        with Reader(out) as reader:
            chunks = {chunk.compression for chunk in reader.storage.storages[0].chunks}
        custom = YAML(typ="safe").load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]["custom_data"]
        assert chunks == {"" if compression == "none" else compression}
        assert custom["dense_perception.isr_served"] == "[8,4,2,1]-[1,2,4]"
        assert topic_counts(out)["/depth/image"] == 4
        sizes[compression] = (out / f"{compression}.mcap").stat().st_size
    assert sizes["zstd"] < sizes["lz4"] < sizes["none"]


def test_no_topic_is_declared_without_messages(tmp_path: Path) -> None:
    out = tmp_path / "relative"
    run_frames(FakeSource(2), BagWriter(out), FakeProcessor(cloud=False), progress=False)
    counts = topic_counts(out)
    assert "/points" not in counts and set(counts.values()) == {2}


@pytest.mark.parametrize("writer_kind", ["mcap", "files"])
def test_disk_full_leaves_nothing_and_the_rerun_works(tmp_path: Path, monkeypatch, writer_kind: str) -> None:
    out = tmp_path / "out"
    make = (lambda: BagWriter(out)) if writer_kind == "mcap" else (lambda: FilesWriter(out, ["npy"]))
    calls = {"n": 0}
    real_save = np.save

    def full(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(*args, **kwargs)

    if writer_kind == "mcap":  # the disk fills when a chunk goes to the file
        from rosbags.rosbag2 import storage_mcap

        monkeypatch.setattr(storage_mcap.McapWriter, "close_chunk",
                            lambda self: (_ for _ in ()).throw(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    else:
        monkeypatch.setattr(np, "save", full)
    with pytest.raises(OutputError, match=f"{out}: cannot (finish )?writ.*No space left on device"):
        run_frames(FakeSource(3), make(), FakeProcessor(), progress=False)
    assert not out.exists() and no_stage_left(tmp_path)
    monkeypatch.undo()
    summary = run_frames(FakeSource(3), make(), FakeProcessor(), progress=False)
    assert summary.written == 3 and out.exists() and no_stage_left(tmp_path)


def test_unwritable_output_folder_is_one_clear_error(tmp_path: Path, monkeypatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: inject what the kernel would answer a user
        def refuse(*args, **kwargs):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        monkeypatch.setattr(atomic.tempfile, "mkdtemp", refuse)
    else:
        locked.chmod(0o500)
    try:
        with pytest.raises(OutputError, match=f"{locked / 'bag'}: cannot write here: Permission denied"):
            check_output(locked / "bag", "mcap")
        with pytest.raises(OutputError, match="Permission denied"):
            run_frames(FakeSource(1), BagWriter(locked / "bag"), FakeProcessor(), progress=False)
    finally:
        locked.chmod(0o700)
    assert list(locked.iterdir()) == []


def test_a_failed_run_leaves_nothing_an_interrupted_one_keeps_its_frames(tmp_path: Path) -> None:
    class Broken(FakeProcessor):
        def process(self, frame: Frame) -> FrameOutputs:
            if frame.index == 2:
                raise RuntimeError("engine failed")
            return super().process(frame)

    out = tmp_path / "failed"
    with pytest.raises(RuntimeError):
        run_frames(FakeSource(4), BagWriter(out), Broken(), progress=False)
    assert not out.exists() and no_stage_left(tmp_path)

    interrupts = Interrupts()
    out = tmp_path / "stopped"
    summary = run_frames(FakeSource(6), FilesWriter(out, ["npy"]), FakeProcessor(stop_after=2, interrupts=interrupts),
                         progress=False, interrupts=interrupts)
    assert summary.interrupted and summary.signal == "SIGTERM" and summary.written == 2
    assert interrupts.exit_status == 143
    run = json.loads((out / "run.json").read_text())
    assert run["files"] == {"depth.npy": 2, "labels.npy": 2}
    assert len((out / "frames.jsonl").read_text().splitlines()) == 2
