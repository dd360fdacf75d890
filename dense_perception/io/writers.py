"""Output writers of the command line: a rosbag2 (MCAP or sqlite3), or per-frame PNG/NPY/PLY files.

Both are context managers taking one :class:`FrameOutputs` per :meth:`write`; leaving the ``with``
block closes the output whatever happened (an exception, Ctrl-C), so it always holds every frame
written so far and opens in other tools.

The bag carries the ROS nodes' topics and message types (:data:`TOPICS`), all stamped with the
input frame's header: Image fields come from :func:`dense_perception.io.images.image_fields` and
the PointCloud2 layout from :func:`dense_perception.pipeline.cloud.cloud_fields`, as in
:mod:`dense_perception.ros.messages`. Messages are built and serialised by ``rosbags`` with the
ROS 2 Jazzy type store, whose MCAP files embed the message definitions (Foxglove decodes them).

PLY files are ``binary_little_endian 1.0`` with the header the format documents
(paulbourke.net/dataformats/ply): ``float x, y, z``, ``uchar red, green, blue``, ``ushort label``.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np

from ..pipeline.cloud import cloud_fields, pointcloud2_layout, unpack_rgb
from .images import image_fields
from .sources import CameraInfoData, Frame

#: Output topic → message type, as the ROS nodes publish them (architecture.md).
TOPICS: Mapping[str, str] = {
    "/camera/image": "sensor_msgs/msg/Image",
    "/camera/camera_info": "sensor_msgs/msg/CameraInfo",
    "/depth/image": "sensor_msgs/msg/Image",
    "/depth/camera_info": "sensor_msgs/msg/CameraInfo",
    "/depth/colored": "sensor_msgs/msg/Image",
    "/seg/labels": "sensor_msgs/msg/Image",
    "/seg/colored": "sensor_msgs/msg/Image",
    "/points": "sensor_msgs/msg/PointCloud2",
}
#: Bag storage formats, by ``--format`` name.
BAG_FORMATS = ("mcap", "sqlite3")
#: Per-frame file kinds ``--format`` accepts (``files`` = all of them).
FILE_KINDS = ("png", "npy", "ply")
_NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class FrameOutputs:
    """Everything produced for one input frame, as arrays.

    ``depth``: float32 [H, W] (metres, or relative inverse depth — ``depth_kind``); ``labels``:
    uint8/uint16 [H, W] class ids; ``depth_colored``/``seg_colored``: RGB uint8 [H, W, 3] views;
    ``cloud``: a :data:`~dense_perception.pipeline.cloud.CLOUD_DTYPE` array, or None when the depth
    is not metric; ``camera``: the intrinsics the cloud was built with.
    """

    frame: Frame
    camera: CameraInfoData
    depth: np.ndarray
    depth_kind: str
    depth_colored: np.ndarray
    labels: np.ndarray
    seg_colored: np.ndarray
    cloud: np.ndarray | None


class Writer(Protocol):
    """What the runner writes into."""

    path: Path

    def __enter__(self) -> Writer: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def write(self, outputs: FrameOutputs) -> None: ...


def label_encoding(labels: np.ndarray) -> str:
    """``mono8`` for uint8 labels, ``16UC1`` for uint16 (more than 256 classes), as the seg node."""
    if labels.dtype == np.uint8:
        return "mono8"
    if labels.dtype == np.uint16:
        return "16UC1"
    raise ValueError(f"labels must be uint8 or uint16, got {labels.dtype}")


class BagWriter:
    """A rosbag2 (``storage`` ``mcap`` or ``sqlite3``) with the nodes' topics (:data:`TOPICS`).

    ``path`` is the bag directory to create (it must not exist). ``custom_data`` goes into the
    bag's ``metadata.yaml`` (e.g. which networks ran untrained). ``/points`` is written only for
    frames that have a cloud.
    """

    def __init__(self, path: str | Path, storage: str = "mcap",
                 custom_data: Mapping[str, str] | None = None) -> None:
        if storage not in BAG_FORMATS:
            raise ValueError(f"unknown bag storage {storage!r}; choose from {', '.join(BAG_FORMATS)}")
        self.path = Path(path)
        self.storage = storage
        self.custom_data = dict(custom_data or {})
        self.counts: dict[str, int] = dict.fromkeys(TOPICS, 0)
        self._bag: Any = None
        self._connections: dict[str, Any] = {}
        self._types: Any = None

    def __enter__(self) -> BagWriter:
        from rosbags.rosbag2 import StoragePlugin
        from rosbags.rosbag2 import Writer as Rosbag2Writer
        from rosbags.typesys import Stores, get_typestore

        if self.path.exists():
            raise ValueError(f"{self.path}: exists already; choose a new output path")
        store = get_typestore(Stores.ROS2_JAZZY)
        plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
        bag = Rosbag2Writer(self.path, version=9, storage_plugin=plugin)
        for key, value in self.custom_data.items():
            bag.set_custom_data(key, value)
        bag.open()
        self._bag, self._types = bag, store
        self._connections = {topic: bag.add_connection(topic, msgtype, typestore=store)
                             for topic, msgtype in TOPICS.items()}
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Write the index and ``metadata.yaml``; safe to call twice."""
        bag, self._bag = self._bag, None
        if bag is not None:
            bag.close()

    def write(self, outputs: FrameOutputs) -> None:
        """All messages of one frame, in topic order, with the frame's stamp as log time."""
        if self._bag is None:
            raise RuntimeError("BagWriter is not open")
        frame = outputs.frame
        header = self._header(frame.stamp_ns, frame.frame_id)
        info = self._camera_info(outputs.camera, header)
        messages: list[tuple[str, Any]] = [
            ("/camera/image", self._image(frame.rgb, "rgb8", header)),
            ("/camera/camera_info", info),
            ("/depth/image", self._image(outputs.depth.astype(np.float32, copy=False), "32FC1",
                                         header)),
            ("/depth/camera_info", info),
            ("/depth/colored", self._image(outputs.depth_colored, "rgb8", header)),
            ("/seg/labels", self._image(outputs.labels, label_encoding(outputs.labels), header)),
            ("/seg/colored", self._image(outputs.seg_colored, "rgb8", header)),
        ]
        if outputs.cloud is not None:
            messages.append(("/points", self._pointcloud2(outputs.cloud, header)))
        for topic, msg in messages:
            data = self._types.serialize_cdr(msg, TOPICS[topic])
            self._bag.write(self._connections[topic], frame.stamp_ns, data)
            self.counts[topic] += 1

    def _msg(self, msgtype: str, **fields: Any) -> Any:
        return self._types.types[msgtype](**fields)

    def _header(self, stamp_ns: int, frame_id: str) -> Any:
        sec, nanosec = divmod(int(stamp_ns), _NS_PER_S)
        stamp = self._msg("builtin_interfaces/msg/Time", sec=sec, nanosec=nanosec)
        return self._msg("std_msgs/msg/Header", stamp=stamp, frame_id=frame_id)

    def _image(self, array: np.ndarray, encoding: str, header: Any) -> Any:
        return self._msg("sensor_msgs/msg/Image", header=header, **image_fields(array, encoding))

    def _camera_info(self, camera: CameraInfoData, header: Any) -> Any:
        roi = self._msg("sensor_msgs/msg/RegionOfInterest", x_offset=0, y_offset=0, height=0,
                        width=0, do_rectify=False)
        return self._msg(
            "sensor_msgs/msg/CameraInfo", header=header, height=camera.height, width=camera.width,
            distortion_model=camera.distortion_model, d=np.asarray(camera.d, dtype=np.float64),
            k=np.asarray(camera.k, dtype=np.float64), r=np.asarray(camera.r, dtype=np.float64),
            p=np.asarray(camera.projection(), dtype=np.float64), binning_x=0, binning_y=0, roi=roi)

    def _pointcloud2(self, cloud: np.ndarray, header: Any) -> Any:
        fields = [self._msg("sensor_msgs/msg/PointField", name=f.name, offset=f.offset,
                            datatype=int(f.datatype), count=f.count) for f in cloud_fields()]
        return self._msg("sensor_msgs/msg/PointCloud2", header=header, fields=fields,
                         **pointcloud2_layout(cloud))


def parse_file_kinds(text: str) -> frozenset[str]:
    """``files`` → every kind; else a comma list of :data:`FILE_KINDS` (``ValueError`` if unknown)."""
    if text == "files":
        return frozenset(FILE_KINDS)
    kinds = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(kinds - set(FILE_KINDS))
    if unknown or not kinds:
        raise ValueError(f"unknown --format {text!r}; use {', '.join(BAG_FORMATS)}, files, or a "
                         f"comma list of {', '.join(FILE_KINDS)}")
    return kinds


class FilesWriter:
    """Per-frame files in a folder, named by the frame's index (``000012_depth.npy``, ...).

    ``png``: ``_image.png`` (input), ``_depth.png`` (coloured depth), ``_seg.png`` (label overlay),
    ``_labels.png`` (class ids, 8 or 16 bit). ``npy``: ``_depth.npy`` (float32), ``_labels.npy``.
    ``ply``: ``_cloud.ply`` (frames with a cloud). Always ``frames.jsonl``: one line per frame with
    its index, stamp, frame_id, intrinsics, depth units and files, and ``run.json`` with ``notes``.
    """

    def __init__(self, path: str | Path, kinds: Iterable[str] = FILE_KINDS,
                 notes: Mapping[str, str] | None = None) -> None:
        self.path = Path(path)
        self.kinds = frozenset(kinds)
        self.notes = dict(notes or {})
        self.count = 0
        self._index: Any = None

    def __enter__(self) -> FilesWriter:
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise ValueError(f"{self.path}: exists already and is not an empty folder; choose a "
                             "new output path")
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "run.json").write_text(json.dumps(self.notes, indent=2) + "\n", "utf-8")
        self._index = (self.path / "frames.jsonl").open("w", encoding="utf-8")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        index, self._index = self._index, None
        if index is not None:
            index.close()

    def write(self, outputs: FrameOutputs) -> None:
        """The files of one frame, then its line in ``frames.jsonl`` (flushed)."""
        if self._index is None:
            raise RuntimeError("FilesWriter is not open")
        stem = f"{outputs.frame.index:06d}"
        written: list[str] = []

        def target(suffix: str) -> Path:
            written.append(f"{stem}_{suffix}")
            return self.path / f"{stem}_{suffix}"

        if "png" in self.kinds:
            write_png(target("image.png"), outputs.frame.rgb)
            write_png(target("depth.png"), outputs.depth_colored)
            write_png(target("seg.png"), outputs.seg_colored)
            write_png(target("labels.png"), outputs.labels)
        if "npy" in self.kinds:
            np.save(target("depth.npy"), outputs.depth.astype(np.float32, copy=False))
            np.save(target("labels.npy"), outputs.labels)
        if "ply" in self.kinds and outputs.cloud is not None:
            write_ply(target("cloud.ply"), outputs.cloud, comments=_comments(self.notes))
        record = {"index": outputs.frame.index, "stamp_ns": outputs.frame.stamp_ns,
                  "frame_id": outputs.frame.frame_id, "width": outputs.camera.width,
                  "height": outputs.camera.height, "K": list(outputs.camera.k),
                  "depth_kind": outputs.depth_kind, "files": written}
        self._index.write(json.dumps(record) + "\n")
        self._index.flush()
        self.count += 1


def write_png(path: Path, image: np.ndarray) -> None:
    """An RGB uint8 [H, W, 3], or a uint8/uint16 [H, W] image, as PNG (``OSError`` on failure)."""
    import cv2

    pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    if not cv2.imwrite(str(path), pixels):
        raise OSError(f"{path}: OpenCV could not write the PNG")


def _comments(notes: Mapping[str, str]) -> list[str]:
    return [f"{key}: {value}" for key, value in notes.items()]


def ply_vertices(cloud: np.ndarray) -> np.ndarray:
    """A cloud (:data:`CLOUD_DTYPE`, any shape) as PLY vertex records; points with NaN are dropped."""
    points = cloud.reshape(-1)
    points = points[np.isfinite(points["x"]) & np.isfinite(points["y"]) & np.isfinite(points["z"])]
    vertices = np.empty(points.size, dtype=PLY_VERTEX_DTYPE)
    for axis in "xyz":
        vertices[axis] = points[axis]
    rgb = unpack_rgb(points["rgb"])
    vertices["red"], vertices["green"], vertices["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    vertices["label"] = points["label"]
    return vertices


#: One PLY vertex: position in metres (camera optical frame), colour, class id.
PLY_VERTEX_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"),
                             ("green", "u1"), ("blue", "u1"), ("label", "<u2")])
_PLY_TYPES = {"<f4": "float", "u1": "uchar", "|u1": "uchar", "<u2": "ushort"}


def write_ply(path: str | Path, cloud: np.ndarray, comments: Iterable[str] = ()) -> int:
    """A binary little-endian PLY of ``cloud``'s finite points; returns the vertex count.

    Each comment must be one line. Label ``65535`` marks points without a label.
    """
    vertices = ply_vertices(cloud)
    lines = ["ply", "format binary_little_endian 1.0"]
    for comment in comments:
        if "\n" in comment or "\r" in comment:
            raise ValueError(f"a PLY comment must be one line: {comment!r}")
        lines.append(f"comment {comment}")
    lines.append(f"element vertex {vertices.size}")
    lines += [f"property {_PLY_TYPES[PLY_VERTEX_DTYPE[name].str]} {name}"
              for name in PLY_VERTEX_DTYPE.names]
    lines.append("end_header")
    with Path(path).open("wb") as handle:
        handle.write(("\n".join(lines) + "\n").encode("ascii", "replace"))
        handle.write(vertices.tobytes())
    return int(vertices.size)
