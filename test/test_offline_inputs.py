"""Reading recordings nobody made for us: per-topic parsing, odd metadata, ROS 1 bags, suffixes in
any case, input kinds by content, and the input pixel limit. No network runs here (fast)."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from bag_fixtures import BROKEN_TYPE, INFO_K, NS, UNRESOLVED_MSGDEF, gradient_image, write_bag, write_ros1_bag
from dense_perception.io.bags import BagReader, sniff_recording
from dense_perception.io.images import DEFAULT_MAX_INPUT_PIXELS
from dense_perception.io.sources import BadFrame, BagSource, FolderSource, SourceError, open_source

STAMPS = [1_700_000_000 * NS + i * 50_000_000 for i in range(3)]


def frames_of(source) -> list:
    return list(source.frames())


def assert_same_frames(found: list, images: list[np.ndarray]) -> None:
    assert [f.stamp_ns for f in found] == STAMPS
    for frame, rgb in zip(found, images):
        np.testing.assert_array_equal(frame.rgb, rgb)
        assert frame.frame_id == "cam_optical"
        np.testing.assert_allclose(frame.camera_info.k, INFO_K)


@pytest.mark.parametrize("storage", [StoragePlugin.MCAP, StoragePlugin.SQLITE3], ids=["mcap", "sqlite3"])
def test_unparseable_topic_is_skipped_with_one_line(tmp_path: Path, caplog, storage) -> None:
    images = write_bag(tmp_path / "bag", STAMPS, storage, broken_topic=True)
    with caplog.at_level(logging.WARNING):
        source = open_source(tmp_path / "bag", topic="/cam/image_raw")
    lines = [r.getMessage() for r in caplog.records if "cannot be parsed" in r.getMessage()]
    assert len(lines) == 1 and "/weird" in lines[0] and BROKEN_TYPE in lines[0]
    assert "/weird" in source.describe()
    assert_same_frames(frames_of(source), images)
    # without --topic too: the only parseable image topic
    assert open_source(tmp_path / "bag").topic == "/cam/image_raw"


def test_asking_for_the_unparseable_topic_names_the_cause(tmp_path: Path) -> None:
    write_bag(tmp_path / "bag", STAMPS, broken_topic=True)
    with pytest.raises(SourceError, match=r"/weird: its message definition cannot be parsed .*int32\[ bad"):
        BagSource(tmp_path / "bag", topic="/weird")


def test_definition_with_an_undefined_nested_type_is_skipped(tmp_path: Path) -> None:
    store = get_typestore(Stores.ROS2_JAZZY)
    with Writer(tmp_path / "bag", version=9, storage_plugin=StoragePlugin.MCAP) as bag:
        bag.add_connection("/odd", "odd_msgs/msg/Odd", msgdef=UNRESOLVED_MSGDEF, rihs01="RIHS01_" + "1" * 64)
        bag.add_connection("/img", "sensor_msgs/msg/Image", typestore=store)
    with BagReader(tmp_path / "bag" / "bag.mcap") as reader:  # the file alone: no hash to compare
        assert set(reader.topics) == {"/img"}
        assert "missing_msgs/msg/Thing" in reader.unparsed["/odd"]


def test_empty_storage_identifier_is_read_by_content(tmp_path: Path) -> None:
    images = write_bag(tmp_path / "bag", STAMPS)
    metadata = tmp_path / "bag" / "metadata.yaml"
    text = metadata.read_text()
    assert "storage_identifier: mcap" in text
    metadata.write_text(text.replace("storage_identifier: mcap", "storage_identifier: ''"))
    assert_same_frames(frames_of(open_source(tmp_path / "bag")), images)


def test_storage_files_by_content_and_suffix_in_any_case(tmp_path: Path) -> None:
    images = write_bag(tmp_path / "bag", STAMPS)
    upper = tmp_path / "RECORDING.MCAP"
    bare = tmp_path / "recording"  # no suffix at all
    for copy in (upper, bare):
        shutil.copy(tmp_path / "bag" / "bag.mcap", copy)
        assert sniff_recording(copy) == "mcap"
        source = open_source(copy)
        assert source.kind == "rosbag2"
        assert_same_frames(frames_of(source), images)


def test_ros1_bag_is_read(tmp_path: Path) -> None:
    images = write_ros1_bag(tmp_path / "old.bag", STAMPS)
    source = open_source(tmp_path / "old.bag")
    assert source.kind == "rosbag1" and "rosbag1" in source.describe()
    assert_same_frames(frames_of(source), images)  # ROS 1 CameraInfo's upper-case K is read


def test_files_that_only_look_like_recordings_are_refused_clearly(tmp_path: Path) -> None:
    fake = tmp_path / "fake.BAG"
    fake.write_bytes(b"not a bag at all" * 4)
    with pytest.raises(SourceError, match="not a ROS 1 bag: it starts with none of"):
        open_source(fake)


def test_pixel_limit_refuses_large_images_with_the_option_named(tmp_path: Path) -> None:
    assert DEFAULT_MAX_INPUT_PIXELS == 4096 * 3072
    image = tmp_path / "big.png"
    cv2.imwrite(str(image), gradient_image(40, 50, 0))
    with pytest.raises(SourceError, match=r"50x40 = 2,000 pixels exceeds the limit of 1,999 .*--max-input-pixels"):
        open_source(image, max_pixels=1999)
    assert open_source(image, max_pixels=2000).expected_frames() == 1
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(image, folder / "a.png")
    cv2.imwrite(str(folder / "b.png"), gradient_image(10, 10, 1))
    found = frames_of(FolderSource(folder, max_pixels=1000))
    assert isinstance(found[0], BadFrame) and "--max-input-pixels" in found[0].reason
    assert found[1].rgb.shape == (10, 10, 3)
    write_bag(tmp_path / "bag", STAMPS)  # 24x32 frames
    bag_frames = frames_of(open_source(tmp_path / "bag", max_pixels=24 * 32 - 1))
    assert all(isinstance(f, BadFrame) and "--max-input-pixels" in f.reason for f in bag_frames)
