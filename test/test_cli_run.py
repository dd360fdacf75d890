"""End-to-end tests of ``dense-perception demo`` and ``dense-perception run``.

Every output is reopened with an independent reader: ``rosbags`` for bags, OpenCV for images,
``plyfile`` for PLY (a hand-written header parser when plyfile is absent). Networks run untrained
at a 32x32 input so the file stays fast on a CPU; what is checked is the plumbing: frame counts,
stamps, frame ids, encodings, units, camera models, and that every cloud point back-projects onto
the depth image it came from.
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from ruamel.yaml import YAML
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from bag_fixtures import write_bag
from dense_perception.cli import main as cli_main
from dense_perception.io.images import image_array
from dense_perception.runner import Interrupts

REPO = Path(__file__).resolve().parents[1]
FAST = ["--untrained", "--no-download", "--input-size", "32", "32", "--no-progress"]
TOPICS = ("/camera/image", "/camera/camera_info", "/depth/image", "/depth/camera_info",
          "/depth/colored", "/seg/labels", "/seg/colored", "/points")
NS = 1_000_000_000


# -- independent readers ---------------------------------------------------------------------------


def read_bag(path: Path) -> dict[str, list[tuple[int, object]]]:
    """topic -> [(log time, deserialised message)] of a rosbag2, read with rosbags."""
    topics: dict[str, list[tuple[int, object]]] = {}
    with AnyReader([path]) as reader:
        for connection, stamp, raw in reader.messages():
            topics.setdefault(connection.topic, []).append(
                (stamp, reader.deserialize(raw, connection.msgtype)))
    return topics


def read_raw(path: Path) -> dict[str, list[tuple[int, bytes]]]:
    """topic -> [(log time, serialised bytes)] of a bag or MCAP file, read with rosbags."""
    topics: dict[str, list[tuple[int, bytes]]] = {}
    with AnyReader([path]) as reader:
        for connection, stamp, raw in reader.messages():
            topics.setdefault(connection.topic, []).append((stamp, bytes(raw)))
    return topics


def read_ply(path: Path) -> tuple[np.ndarray, list[str]]:
    """Vertices (structured array) and comments of a PLY file."""
    try:
        from plyfile import PlyData
    except ImportError:  # the documented header, parsed by hand
        return _parse_binary_ply(path)
    ply = PlyData.read(str(path))
    return ply["vertex"].data, list(ply.comments)


def _parse_binary_ply(path: Path) -> tuple[np.ndarray, list[str]]:
    types = {"float": "<f4", "uchar": "u1", "ushort": "<u2"}
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    assert header[:2] == ["ply", "format binary_little_endian 1.0"]
    comments = [line[len("comment "):] for line in header if line.startswith("comment ")]
    count = next(int(line.split()[2]) for line in header if line.startswith("element vertex"))
    fields = [(line.split()[2], types[line.split()[1]]) for line in header
              if line.startswith("property")]
    return np.frombuffer(data[end:], dtype=np.dtype(fields), count=count), comments


def k_matrix(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(3, 3)


def assert_backprojects(x, y, z, depth: np.ndarray, K: np.ndarray) -> None:
    """Every point projects with K onto an integer pixel whose depth is the point's z."""
    assert len(z) > 0
    u = K[0, 0] * np.asarray(x, np.float64) / z + K[0, 2]
    v = K[1, 1] * np.asarray(y, np.float64) / z + K[1, 2]
    np.testing.assert_allclose(u, np.round(u), atol=2e-3)
    np.testing.assert_allclose(v, np.round(v), atol=2e-3)
    rows, cols = np.round(v).astype(int), np.round(u).astype(int)
    assert rows.min() >= 0 and cols.min() >= 0
    assert rows.max() < depth.shape[0] and cols.max() < depth.shape[1]
    np.testing.assert_allclose(np.asarray(z), depth[rows, cols], rtol=1e-6)


def cloud_points(msg) -> np.ndarray:
    """A PointCloud2's points, decoded from its own fields (not the writer's dtype)."""
    types = {7: "<f4", 4: "<u2"}
    dtype = np.dtype({"names": [f.name for f in msg.fields],
                      "formats": [types[f.datatype] for f in msg.fields],
                      "offsets": [f.offset for f in msg.fields], "itemsize": msg.point_step})
    return np.frombuffer(np.asarray(msg.data, np.uint8).tobytes(), dtype=dtype)


def check_frame_messages(topics, index: int, expect_cloud: bool) -> None:
    """The messages of one output frame agree with each other (stamps, sizes, units, cloud)."""
    image = topics["/camera/image"][index][1]
    stamp = (image.header.stamp.sec, image.header.stamp.nanosec)
    for topic in TOPICS[:-1] + (("/points",) if expect_cloud else ()):
        msg = topics[topic][index][1]
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == stamp, topic
        assert msg.header.frame_id == image.header.frame_id, topic
        assert topics[topic][index][0] == stamp[0] * NS + stamp[1], topic  # log time = stamp
    encodings = {topic: topics[topic][index][1].encoding for topic in
                 ("/camera/image", "/depth/image", "/depth/colored", "/seg/labels", "/seg/colored")}
    assert encodings == {"/camera/image": "rgb8", "/depth/image": "32FC1", "/depth/colored": "rgb8",
                         "/seg/labels": "mono8", "/seg/colored": "rgb8"}
    depth = image_array(topics["/depth/image"][index][1])
    assert depth.dtype == np.float32 and depth.shape == (image.height, image.width)
    info = topics["/depth/camera_info"][index][1]
    assert (info.width, info.height) == (image.width, image.height)
    labels = image_array(topics["/seg/labels"][index][1])
    assert labels.shape == depth.shape and labels.max() < 150  # ADE20K ids
    if expect_cloud:
        cloud = topics["/points"][index][1]
        assert [f.name for f in cloud.fields] == ["x", "y", "z", "rgb", "label"]
        assert (cloud.point_step, cloud.height, cloud.is_dense) == (20, 1, True)
        assert cloud.row_step == 20 * cloud.width
        points = cloud_points(cloud)
        assert_backprojects(points["x"], points["y"], points["z"], depth, k_matrix(info.k))
        rows = np.round(points["y"] / points["z"] * info.k[4] + info.k[5]).astype(int)
        cols = np.round(points["x"] / points["z"] * info.k[0] + info.k[2]).astype(int)
        np.testing.assert_array_equal(points["label"], labels[rows, cols])


def default_k(width: int, height: int, fov_deg: float = 60.0) -> np.ndarray:
    focal = width / 2 / math.tan(math.radians(fov_deg) / 2)
    return np.array([[focal, 0, (width - 1) / 2], [0, focal, (height - 1) / 2], [0, 0, 1]])


# -- inputs ----------------------------------------------------------------------------------------


def gradient_image(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    image[..., 1] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    image[..., 2] = rng.integers(0, 255, (height, width), dtype=np.uint8)
    return image


def write_input_bag(path: Path, storage: StoragePlugin, stamps_ns: list[int]) -> list[np.ndarray]:
    """A rosbag2 with /cam/image_raw (bgr8, 24x32; one broken message) and /cam/camera_info."""
    store = get_typestore(Stores.ROS2_JAZZY)
    Image, CameraInfo = store.types["sensor_msgs/msg/Image"], store.types["sensor_msgs/msg/CameraInfo"]
    Header, Time = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
    Roi = store.types["sensor_msgs/msg/RegionOfInterest"]
    images = []
    with Writer(path, version=9, storage_plugin=storage) as bag:
        image_conn = bag.add_connection("/cam/image_raw", "sensor_msgs/msg/Image", typestore=store)
        info_conn = bag.add_connection("/cam/camera_info", "sensor_msgs/msg/CameraInfo",
                                       typestore=store)
        for i, stamp in enumerate(stamps_ns):
            header = Header(stamp=Time(sec=stamp // NS, nanosec=stamp % NS), frame_id="cam_optical")
            rgb = gradient_image(24, 32, i)
            bgr = np.ascontiguousarray(rgb[..., ::-1])
            data = bgr.reshape(-1) if i != 1 else bgr.reshape(-1)[:100]  # frame 1 is truncated
            if i != 1:
                images.append(rgb)
            info = CameraInfo(header=header, height=24, width=32, distortion_model="plumb_bob",
                              d=np.zeros(5), k=np.array([40.0, 0, 15.5, 0, 42.0, 11.5, 0, 0, 1]),
                              r=np.eye(3).reshape(-1), p=np.array([40.0, 0, 15.5, 0, 0, 42.0, 11.5,
                                                                   0, 0, 0, 1, 0]),
                              binning_x=0, binning_y=0,
                              roi=Roi(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
            bag.write(info_conn, stamp, store.serialize_cdr(info, "sensor_msgs/msg/CameraInfo"))
            msg = Image(header=header, height=24, width=32, encoding="bgr8", is_bigendian=0,
                        step=96, data=data)
            bag.write(image_conn, stamp, store.serialize_cdr(msg, "sensor_msgs/msg/Image"))
    return images


def run_cli(*argv: str, capsys=None) -> tuple[int, str, str]:
    code = cli_main(list(argv))
    out, err = capsys.readouterr() if capsys is not None else ("", "")
    return code, out, err


# -- demo ------------------------------------------------------------------------------------------


def test_demo_writes_every_output(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    code, stdout, stderr = run_cli("demo", "--out", str(out), *FAST[:-1], capsys=capsys)
    assert code == 0, stderr
    sample = cv2.imread(str(REPO / "dense_perception" / "data" / "sample.jpg"))
    height, width = sample.shape[:2]
    assert (REPO / "dense_perception" / "data" / "LICENSE.md").read_text().count("CC0")
    assert (REPO / "dense_perception" / "data" / "sample.jpg").stat().st_size <= 200_000
    for name in ("depth.png", "labels_overlay.png"):
        image = cv2.imread(str(out / name))
        assert image is not None and image.shape == (height, width, 3), name
        assert (image[0, :, 2] > 150).all() and (image[0, :, :2] < 60).all()  # red UNTRAINED banner
    summary = cv2.imread(str(out / "summary.png"))
    assert summary.shape[1] == 3 * width and summary.shape[0] > height
    assert "UNTRAINED" in (out / "README.txt").read_text()
    assert "UNTRAINED" in stdout and str(out) in stdout

    vertices, comments = read_ply(out / "cloud.ply")
    assert any("UNTRAINED" in c for c in comments)
    assert set(vertices.dtype.names) == {"x", "y", "z", "red", "green", "blue", "label"}
    assert len(vertices) == height * width  # metric depth, untrained NYU head: all positive

    topics = read_bag(out / "rosbag2_demo")
    assert sorted(topics) == sorted(TOPICS) and all(len(v) == 1 for v in topics.values())
    assert (out / "rosbag2_demo" / "rosbag2_demo.mcap").is_file()
    check_frame_messages(topics, 0, expect_cloud=True)
    np.testing.assert_array_equal(image_array(topics["/camera/image"][0][1]),
                                  cv2.cvtColor(sample, cv2.COLOR_BGR2RGB))
    np.testing.assert_allclose(k_matrix(topics["/camera/camera_info"][0][1].k),
                               default_k(width, height))
    depth = image_array(topics["/depth/image"][0][1])
    assert_backprojects(vertices["x"], vertices["y"], vertices["z"], depth, default_k(width, height))
    cloud = cloud_points(topics["/points"][0][1])
    np.testing.assert_array_equal(cloud["label"], vertices["label"])
    packed = cloud["rgb"].view("<u4")
    np.testing.assert_array_equal((packed >> 16) & 0xFF, vertices["red"])
    metadata = YAML(typ="safe").load((out / "rosbag2_demo" / "metadata.yaml").read_text())
    custom = metadata["rosbag2_bagfile_information"]["custom_data"]
    assert custom["dense_perception.untrained"] == "dpt_hybrid_nyu,edaformer_t_ade20k"


# -- run: images, video, bags ----------------------------------------------------------------------


def test_run_image_folder_to_files(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in (0, 1, 3):
        cv2.imwrite(str(folder / f"frame{i}.png"), gradient_image(24, 32, i)[..., ::-1])
    (folder / "frame2.png").write_bytes(b"not a png")  # a bad frame in a good input
    (folder / "notes.txt").write_text("ignored")
    out = tmp_path / "out"
    code, stdout, _ = run_cli("run", str(folder), "--out", str(out), "--format", "files",
                              "--depth", "dpt_hybrid_midas", "--depth-scale", "1", "--depth-shift",
                              "0.5", "--fov", "90", *FAST, capsys=capsys)  # MiDaS fitted to metres
    assert code == 0
    assert "3 written, 1 skipped" in stdout and "skipped frame 2: frame2.png" in stdout
    assert "metres from --depth-scale" in stdout and "default pinhole model (90 deg" in stdout
    records = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 1, 3]
    assert [r["stamp_ns"] for r in records] == [0, 100_000_000, 300_000_000]  # 10 frames/s
    for record in records:
        stem = out / f"{record['index']:06d}"
        K = k_matrix(record["K"])
        np.testing.assert_allclose(K, default_k(32, 24, 90.0))
        image = cv2.imread(f"{stem}_image.png")
        np.testing.assert_array_equal(image[..., ::-1], gradient_image(24, 32, record["index"]))
        depth = np.load(f"{stem}_depth.npy")
        assert depth.dtype == np.float32 and depth.shape == (24, 32)
        assert record["depth_kind"] == "metric_fitted" and 0 < np.nanmin(depth) and np.nanmax(depth) < 2.1
        labels = np.load(f"{stem}_labels.npy")
        np.testing.assert_array_equal(cv2.imread(f"{stem}_labels.png", cv2.IMREAD_UNCHANGED), labels)
        for view in ("depth", "seg"):
            assert cv2.imread(f"{stem}_{view}.png").shape == (24, 32, 3)
        vertices, _ = read_ply(Path(f"{stem}_cloud.ply"))
        assert_backprojects(vertices["x"], vertices["y"], vertices["z"], depth, K)
        np.testing.assert_array_equal(
            vertices["label"], labels[np.round(vertices["y"] / vertices["z"] * K[1, 1] + K[1, 2]).astype(int),
                                      np.round(vertices["x"] / vertices["z"] * K[0, 0] + K[0, 2]).astype(int)])
    assert json.loads((out / "run.json").read_text())["dense_perception.untrained"]


def test_run_video_midas_is_relative(tmp_path: Path, capsys) -> None:
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (32, 24))
    assert writer.isOpened()
    for i in range(5):
        writer.write(gradient_image(24, 32, i)[..., ::-1].copy())
    writer.release()
    out = tmp_path / "video_bag"
    code, stdout, _ = run_cli("run", str(video), "--out", str(out), "--every", "2",
                              "--max-frames", "2", *FAST, "--depth", "dpt_hybrid_midas", capsys=capsys)
    assert code == 0
    assert "RELATIVE INVERSE" in stdout and "0 point clouds" in stdout
    topics = read_bag(out)
    assert "/points" not in topics
    assert [len(topics[t]) for t in TOPICS[:-1]] == [2] * 7
    assert [stamp for stamp, _ in topics["/camera/image"]] == [0, 400_000_000]  # frames 0 and 2
    for index in range(2):
        check_frame_messages(topics, index, expect_cloud=False)


def test_run_bag_with_an_unparseable_topic_equals_the_clean_bag(tmp_path: Path, capsys) -> None:
    """The issue's case: a topic whose schema rosbags cannot parse beside the images; with --topic
    the outputs equal those of the same bag without it (untrained weights are seeded)."""
    stamps = [1_700_000_000 * NS + i * 40_000_000 for i in range(2)]
    outputs = {}
    for name, broken in (("clean", False), ("with_broken_topic", True)):
        write_bag(tmp_path / name, stamps, StoragePlugin.MCAP, broken_topic=broken)
        out = tmp_path / f"{name}.mcap"
        code, stdout, stderr = run_cli("run", str(tmp_path / name), "--out", str(out), "--topic",
                                       "/cam/image_raw", *FAST, capsys=capsys)
        assert code == 0, stderr
        assert ("skipped topics with unparseable definitions: /weird" in stdout) == broken
        outputs[name] = {topic: [raw for _, raw in messages] for topic, messages in read_raw(out).items()}
    assert outputs["clean"] == outputs["with_broken_topic"]
    assert sorted(outputs["clean"]) == sorted(TOPICS)


@pytest.mark.parametrize("storage, out_format", [(StoragePlugin.MCAP, "sqlite3"),
                                                 (StoragePlugin.SQLITE3, "mcap")],
                         ids=["mcap-to-sqlite3", "sqlite3-to-mcap"])
def test_run_rosbag(tmp_path: Path, capsys, storage: StoragePlugin, out_format: str) -> None:
    stamps = [1_700_000_000 * NS + 5, 1_700_000_000 * NS + 50_000_000, 1_700_000_000 * NS + 100_000_000]
    source = tmp_path / "input_bag"
    images = write_input_bag(source, storage, stamps)
    out = tmp_path / "out_bag"
    code, stdout, _ = run_cli("run", str(source), "--out", str(out), "--format", out_format,
                              "--depth", "dpt_hybrid_nyu", *FAST, capsys=capsys)
    assert code == 0
    assert "2 written, 1 skipped" in stdout and "camera: recorded camera_info" in stdout
    metadata = YAML(typ="safe").load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert metadata["storage_identifier"] == out_format
    topics = read_bag(out)
    assert sorted(topics) == sorted(TOPICS) and all(len(v) == 2 for v in topics.values())
    assert [stamp for stamp, _ in topics["/camera/image"]] == [stamps[0], stamps[2]]
    for index, rgb in enumerate(images):
        check_frame_messages(topics, index, expect_cloud=True)
        assert topics["/camera/image"][index][1].header.frame_id == "cam_optical"
        np.testing.assert_array_equal(image_array(topics["/camera/image"][index][1]), rgb)
        info = topics["/camera/camera_info"][index][1]
        np.testing.assert_allclose(info.k, [40.0, 0, 15.5, 0, 42.0, 11.5, 0, 0, 1])
        assert info.distortion_model == "plumb_bob" and len(info.p) == 12


# -- errors and interruption -----------------------------------------------------------------------


def test_unreadable_inputs_give_one_line_errors(tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00garbage" * 10)
    two = tmp_path / "two_topics"
    store = get_typestore(Stores.ROS2_JAZZY)
    with Writer(two, version=9, storage_plugin=StoragePlugin.MCAP) as bag:
        for topic in ("/a/image", "/b/image"):
            bag.add_connection(topic, "sensor_msgs/msg/Image", typestore=store)
    cases = {tmp_path / "missing.png": "no such file", broken: "cannot open it as a video",
             two: "several image topics (/a/image, /b/image); pick one with --topic"}
    for path, reason in cases.items():
        code, _, stderr = run_cli("run", str(path), "--out", str(tmp_path / "o"), *FAST,
                                  capsys=capsys)
        assert code == 2
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and str(path) in lines[0] and reason in lines[0], stderr
    existing = tmp_path / "exists"
    existing.mkdir()
    code, _, stderr = run_cli("run", str(broken), "--out", str(existing), *FAST, capsys=capsys)
    assert code == 2 and "exists already" in stderr


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["sigint", "sigterm"])
def test_signal_leaves_a_valid_bag(tmp_path: Path, signum: int, status: int) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(40):
        cv2.imwrite(str(folder / f"{i:03d}.png"), gradient_image(24, 32, i))
    out = tmp_path / "interrupted"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen(
        [sys.executable, "-m", "dense_perception.cli", "run", str(folder), "--out", str(out),
         "--depth", "dpt_hybrid_nyu", *FAST[:-1]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    stderr_chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr_chunks.extend(iter(
        lambda: process.stderr.read1(4096), b"")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while not re.search(rb"\b[1-9]\d*/40\b", b"".join(stderr_chunks)):  # tqdm: frames done
        assert process.poll() is None, b"".join(stderr_chunks).decode()
        assert time.monotonic() < deadline, "no progress within 60 s"
        time.sleep(0.05)
    process.send_signal(signum)  # stop after the frame in progress
    stdout = process.stdout.read()  # stderr has one reader only (the thread): chunks stay in order
    process.wait(timeout=60)
    reader.join(timeout=60)
    stderr = b"".join(stderr_chunks).decode()
    assert process.returncode == status, stderr
    assert b"interrupted" in stdout
    closing = [line for line in stderr.splitlines() if line.startswith("dense-perception run:")]
    assert len(closing) == 1 and f"stopped by {signal.Signals(signum).name}" in closing[0], stderr
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    topics = read_bag(out)
    written = len(topics["/camera/image"])
    assert 1 <= written < 40
    assert all(len(topics[t]) == written for t in TOPICS)  # whole frames only
    assert f"frames: {written} written".encode() in stdout
    for index in range(written):
        check_frame_messages(topics, index, expect_cloud=True)


def test_second_ctrl_c_waits_for_the_frame_being_written() -> None:
    interrupts = Interrupts()
    interrupts.handle(signal.SIGINT, None)  # first: only asks to stop
    assert interrupts.stop.is_set()
    with pytest.raises(KeyboardInterrupt):
        with interrupts.protected():
            interrupts.handle(signal.SIGINT, None)  # second, mid-write: deferred ...
            finished = True  # ... so the write completes
    assert finished
    interrupts.handle(signal.SIGINT, None)  # later ones cannot cut the closing short


def test_second_ctrl_c_outside_a_write_stops_at_once() -> None:
    interrupts = Interrupts()
    interrupts.handle(signal.SIGINT, None)
    with pytest.raises(KeyboardInterrupt):
        interrupts.handle(signal.SIGINT, None)


def test_frame_budget_reaches_both_networks_and_the_summary(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"frame{i}.png"), gradient_image(24, 32, i)[..., ::-1])
    out = tmp_path / "out"
    code, stdout, _ = run_cli("run", str(folder), "--out", str(out), "--format", "files",
                              "--frame-budget-ms", "1", *FAST, capsys=capsys)
    assert code == 0
    line = next(line for line in stdout.splitlines() if line.startswith("frame budget: "))
    # 1 ms cannot be held on a CPU: both governors measured their frames and say so
    assert line.startswith("frame budget: depth 1 ms (frame time (measured) ") and "; seg 1 ms (" in line
    assert line.count("budget held") == 2
    notes = json.loads((out / "run.json").read_text())
    assert notes["dense_perception.frame_budget"] == line.removeprefix("frame budget: ")
    code, _, err = run_cli("run", str(folder), "--out", str(tmp_path / "o2"), "--format", "files",
                           "--frame-budget-ms", "nan", *FAST, capsys=capsys)
    assert code != 0 and "frame budget must be a finite number of milliseconds" in err


@pytest.mark.parametrize("seg, mode", [("vit_comer_t_upernet_ade20k", "slide"),
                                       ("hrvit_b1_segformer_ade20k", "whole")])
def test_run_bag_with_hrvit_and_vit_comer(tmp_path: Path, capsys, seg: str, mode: str) -> None:
    """Issue 21's done-when: both networks in ``run`` (untrained, 32x32: the plumbing), each in its
    official test mode; their labels are the Segmenter's; ISR is refused with the reason."""
    from dense_perception.api import Segmenter

    stamps = [1_700_000_000 * NS + i * 40_000_000 for i in range(2)]
    images = write_bag(tmp_path / "bag", stamps)
    out = tmp_path / "out.mcap"
    code, stdout, stderr = run_cli("run", str(tmp_path / "bag"), "--out", str(out), "--seg", seg, *FAST,
                                   capsys=capsys)
    assert code == 0, stderr
    topics = read_bag(out)
    assert len(topics["/seg/labels"]) == 2 and len(topics["/points"]) == 2
    expected = Segmenter(seg, backend="torch", input_size=(32, 32))
    assert expected.inference.mode == mode
    for (_, message), rgb in zip(topics["/seg/labels"], images):
        np.testing.assert_array_equal(image_array(message), expected.predict(rgb).labels)
    assert "isr served: no ISR" in stdout.splitlines() and f"UNTRAINED weights: {seg}" in stdout
    code, _, err = run_cli("run", str(tmp_path / "bag"), "--out", str(tmp_path / "o2.mcap"), "--seg", seg,
                           "--isr", "2", *FAST, capsys=capsys)
    assert code == 2 and "ISR does not apply to" in err and not (tmp_path / "o2.mcap").exists()
