"""Recordings for the offline tests, written with ``rosbags`` (an independent writer): rosbag2
(MCAP, sqlite3), ROS 1, a topic whose embedded definition cannot be parsed, odd metadata."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from rosbags.rosbag1 import Writer as Rosbag1Writer
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

NS = 1_000_000_000
#: A message definition rosbags' parser rejects (a syntax error).
BROKEN_MSGDEF = "int32 good\nint32[ bad\n"
#: One it parses, with a field of a type the recording does not define.
UNRESOLVED_MSGDEF = "int32 good\nmissing_msgs/Thing thing\n"
BROKEN_TYPE = "weird_msgs/msg/Broken"
INFO_K = (40.0, 0, 15.5, 0, 42.0, 11.5, 0, 0, 1)


def gradient_image(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    image[..., 1] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    image[..., 2] = rng.integers(0, 255, (height, width), dtype=np.uint8)
    return image


def _image_and_info(store, stamp: int, rgb: np.ndarray, ros1: bool) -> tuple[object, object]:
    Image, CameraInfo = store.types["sensor_msgs/msg/Image"], store.types["sensor_msgs/msg/CameraInfo"]
    Header, Time = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
    Roi = store.types["sensor_msgs/msg/RegionOfInterest"]
    time = Time(sec=stamp // NS, nanosec=stamp % NS)
    header = (Header(seq=0, stamp=time, frame_id="cam_optical") if ros1
              else Header(stamp=time, frame_id="cam_optical"))
    height, width = rgb.shape[:2]
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    image = Image(header=header, height=height, width=width, encoding="bgr8", is_bigendian=0,
                  step=3 * width, data=bgr.reshape(-1))
    matrices = {"d": np.zeros(5), "k": np.array(INFO_K), "r": np.eye(3).reshape(-1),
                "p": np.array([40.0, 0, 15.5, 0, 0, 42.0, 11.5, 0, 0, 0, 1, 0])}
    if ros1:
        matrices = {name.upper(): value for name, value in matrices.items()}
    info = CameraInfo(header=header, height=height, width=width, distortion_model="plumb_bob",
                      binning_x=0, binning_y=0,
                      roi=Roi(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False), **matrices)
    return image, info


def write_bag(path: Path, stamps: list[int], storage: StoragePlugin = StoragePlugin.MCAP,
              broken_topic: bool = False, size: tuple[int, int] = (24, 32)) -> list[np.ndarray]:
    """A rosbag2 with /cam/image_raw (bgr8) and /cam/camera_info; with ``broken_topic`` also
    /weird, whose embedded definition rosbags cannot parse. Returns the RGB images."""
    store = get_typestore(Stores.ROS2_JAZZY)
    images = []
    with Writer(path, version=9, storage_plugin=storage) as bag:
        if broken_topic:
            weird = bag.add_connection("/weird", BROKEN_TYPE, msgdef=BROKEN_MSGDEF,
                                       rihs01="RIHS01_" + "0" * 64)
        image_conn = bag.add_connection("/cam/image_raw", "sensor_msgs/msg/Image", typestore=store)
        info_conn = bag.add_connection("/cam/camera_info", "sensor_msgs/msg/CameraInfo",
                                       typestore=store)
        for i, stamp in enumerate(stamps):
            rgb = gradient_image(*size, i)
            images.append(rgb)
            image, info = _image_and_info(store, stamp, rgb, ros1=False)
            bag.write(info_conn, stamp, store.serialize_cdr(info, "sensor_msgs/msg/CameraInfo"))
            bag.write(image_conn, stamp, store.serialize_cdr(image, "sensor_msgs/msg/Image"))
            if broken_topic:
                bag.write(weird, stamp, b"\x00\x01\x00\x00\x07\x00\x00\x00")
    return images


def write_ros1_bag(path: Path, stamps: list[int]) -> list[np.ndarray]:
    """The same content as :func:`write_bag` in a ROS 1 bag."""
    store = get_typestore(Stores.ROS1_NOETIC)
    images = []
    with Rosbag1Writer(path) as bag:
        image_conn = bag.add_connection("/cam/image_raw", "sensor_msgs/msg/Image", typestore=store)
        info_conn = bag.add_connection("/cam/camera_info", "sensor_msgs/msg/CameraInfo",
                                       typestore=store)
        for i, stamp in enumerate(stamps):
            rgb = gradient_image(24, 32, i)
            images.append(rgb)
            image, info = _image_and_info(store, stamp, rgb, ros1=True)
            bag.write(info_conn, stamp, store.serialize_ros1(info, "sensor_msgs/msg/CameraInfo"))
            bag.write(image_conn, stamp, store.serialize_ros1(image, "sensor_msgs/msg/Image"))
    return images
