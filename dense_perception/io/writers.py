"""Output writers of the command line: a rosbag2 (MCAP or sqlite3), or per-frame PNG/NPY/PLY files.

Both are context managers taking one :class:`FrameOutputs` per :meth:`write`. The output is built
under a temporary name beside its destination and moved there when it is closed: a finished or
interrupted run (Ctrl-C, SIGTERM) leaves a complete output holding every frame written, readable by
other tools; a failed run, or a failed write (permission, disk full: :class:`OutputError`, one
line), leaves nothing that would block the next run. MCAP chunks are compressed (zstd by default).

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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np

from ..cli import OutputError
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
#: MCAP chunk compressions, by ``--compression`` name (zstd is the default).
COMPRESSIONS = ("zstd", "lz4", "none")
#: Per-frame file kinds ``--format`` accepts (``files`` = all of them).
FILE_KINDS = ("png", "npy", "ply")
_NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class FrameOutputs:
    """Everything produced for one input frame, as arrays.

    ``depth``: float32 [H, W] (metres, or relative inverse depth — ``depth_kind``); ``labels``:
    uint8/uint16 [H, W] class ids; ``depth_colored``/``seg_colored``: RGB uint8 [H, W, 3] views;
    ``make_cloud``: builds the frame's :data:`~dense_perception.pipeline.cloud.CLOUD_DTYPE` array on
    demand (None when the depth is not metric), so a writer holds a cloud only while it writes it —
    at 12 megapixels one cloud is 240 MB and a storage writer copies it several times; ``camera``: the
    intrinsics the cloud is built with.
    """

    frame: Frame
    camera: CameraInfoData
    depth: np.ndarray
    depth_kind: str
    depth_colored: np.ndarray
    labels: np.ndarray
    seg_colored: np.ndarray
    make_cloud: Callable[[], np.ndarray] | None




class Writer(Protocol):
    """What the runner writes into.

    ``with writer:`` stages the output (:class:`~dense_perception.atomic.StagedOutput`). Leaving the
    block normally or by ``KeyboardInterrupt`` (Ctrl-C, SIGTERM) closes the output and moves it to
    ``path`` with every frame written; any other exception discards it. Write failures raise
    :class:`OutputError`. :meth:`annotate` adds run notes (networks, weights, ...) before closing.
    """

    path: Path

    def __enter__(self) -> Writer: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def write(self, outputs: FrameOutputs) -> None: ...

    def annotate(self, notes: Mapping[str, str]) -> None: ...

    def counts(self) -> dict[str, int]: ...


def label_encoding(labels: np.ndarray) -> str:
    """``mono8`` for uint8 labels, ``16UC1`` for uint16 (more than 256 classes), as the seg node."""
    if labels.dtype == np.uint8:
        return "mono8"
    if labels.dtype == np.uint16:
        return "16UC1"
    raise ValueError(f"labels must be uint8 or uint16, got {labels.dtype}")


def _reason(exc: BaseException) -> str:
    """``strerror`` of an OSError (``No space left on device``), else the message, on one line."""
    text = getattr(exc, "strerror", None) or str(exc)
    return " ".join(str(text).split()) or type(exc).__name__


def bag_storage_for(out: Path, fmt: str | None) -> str:
    """The bag storage of ``--format`` (None: from ``out``'s suffix, ``.db3`` → sqlite3, else mcap);
    ``ValueError`` when the format contradicts a ``.mcap``/``.db3`` suffix."""
    by_suffix = {".mcap": "mcap", ".db3": "sqlite3"}.get(out.suffix.lower())
    storage = fmt or by_suffix or "mcap"
    if by_suffix is not None and storage != by_suffix:
        raise ValueError(f"--out {out} names a {by_suffix} file but --format is {storage}")
    return storage


class BagWriter:
    """A rosbag2 (``storage`` ``mcap`` or ``sqlite3``) with the nodes' topics (:data:`TOPICS`).

    ``path``: a new bag folder, or -- when it ends in ``.mcap``/``.db3`` (any case) -- a single
    storage file at exactly that path (rosbag2 readers and ``ros2 bag play`` open it directly; the
    metadata travels inside it). ``compression``: MCAP chunk compression, ``zstd`` (default),
    ``lz4`` or ``none``; sqlite3 bags are written uncompressed. ``custom_data`` (and
    :meth:`annotate`) go into the bag's metadata. A topic is declared when its first message is
    written, so no topic is listed without messages (``/points`` appears only with clouds).
    """

    def __init__(self, path: str | Path, storage: str = "mcap",
                 custom_data: Mapping[str, str] | None = None, compression: str | None = None) -> None:
        if storage not in BAG_FORMATS:
            raise ValueError(f"unknown bag storage {storage!r}; choose from {', '.join(BAG_FORMATS)}")
        compression = compression or ("zstd" if storage == "mcap" else "none")
        if compression not in COMPRESSIONS:
            raise ValueError(f"unknown --compression {compression!r}; choose from {', '.join(COMPRESSIONS)}")
        if storage == "sqlite3" and compression != "none":
            raise ValueError(f"--compression {compression} applies to MCAP output; sqlite3 bags are "
                             "written uncompressed")
        self.path = Path(path)
        self.storage = storage
        self.compression = compression
        self.single_file = self.path.suffix.lower() in (".mcap", ".db3")
        self.custom_data = dict(custom_data or {})
        self._counts: dict[str, int] = {}
        self._bag: Any = None
        self._stage: Any = None
        self._connections: dict[str, Any] = {}
        self._types: Any = None

    def __enter__(self) -> BagWriter:
        from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin
        from rosbags.rosbag2 import Writer as Rosbag2Writer
        from rosbags.typesys import Stores, get_typestore

        from ..atomic import StagedOutput

        if self.path.exists():
            raise ValueError(f"{self.path}: exists already; choose a new output path")
        try:
            self._stage = StagedOutput(self.path)
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot write here: {_reason(exc)}") from None
        store = get_typestore(Stores.ROS2_JAZZY)
        plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
        name = self.path.stem if self.single_file else self.path.name
        bag = Rosbag2Writer(self._stage.folder / name, version=9, storage_plugin=plugin)
        if self.compression != "none":
            bag.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)  # MCAP chunks
        try:
            bag.open()
            if self.compression == "lz4":
                _use_lz4_chunks(bag.storage)
        except OSError as exc:
            self._stage.discard()
            raise OutputError(f"{self.path}: cannot write here: {_reason(exc)}") from None
        self._bag, self._types = bag, store
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None or issubclass(exc_type, KeyboardInterrupt):
            self.close()
        else:
            self.discard()

    def annotate(self, notes: Mapping[str, str]) -> None:
        """Add ``notes`` to the metadata's custom_data (before the bag is closed)."""
        self.custom_data.update({str(k): str(v) for k, v in notes.items()})

    def counts(self) -> dict[str, int]:
        """Messages written per topic so far (topics with messages only)."""
        return dict(self._counts)

    def close(self) -> Path:
        """Write the index and metadata, then move the bag to :attr:`path`; safe to call twice.
        On a write failure the stage is removed and :class:`OutputError` raised."""
        bag, self._bag = self._bag, None
        if bag is None:
            return self.path
        try:
            for key, value in self.custom_data.items():
                bag.set_custom_data(key, value)
            bag.close()
            produced = bag.path
            if self.single_file:
                produced = next(p for p in bag.path.iterdir() if p.name != "metadata.yaml")
            return self._stage.commit(produced)
        except OSError as exc:
            self._stage.discard()
            raise OutputError(f"{self.path}: cannot finish writing: {_reason(exc)}; nothing was "
                              "kept") from None

    def discard(self) -> None:
        """Drop the bag being written (a failed run leaves nothing behind)."""
        bag, self._bag = self._bag, None
        if bag is not None:
            try:
                bag.abort()
            except Exception:  # noqa: BLE001 - the files go anyway
                pass
        if self._stage is not None:
            self._stage.discard()

    def write(self, outputs: FrameOutputs) -> None:
        """All messages of one frame, in topic order, with the frame's stamp as log time.
        :class:`OutputError` (and nothing kept) when the storage cannot be written."""
        if self._bag is None:
            raise RuntimeError("BagWriter is not open")
        frame = outputs.frame
        header = self._header(frame.stamp_ns, frame.frame_id)
        info = self._camera_info(outputs.camera, header)
        # Built one at a time and dropped once serialised: at 12 MP a frame's messages hold ~0.5 GB
        # (the cloud alone 240 MB), and the storage writer makes its own copies of the bytes.
        builders: list[tuple[str, Callable[[], Any]]] = [
            ("/camera/image", lambda: self._image(frame.rgb, "rgb8", header)),
            ("/camera/camera_info", lambda: info),
            ("/depth/image", lambda: self._image(outputs.depth.astype(np.float32, copy=False), "32FC1",
                                                 header)),
            ("/depth/camera_info", lambda: info),
            ("/depth/colored", lambda: self._image(outputs.depth_colored, "rgb8", header)),
            ("/seg/labels", lambda: self._image(outputs.labels, label_encoding(outputs.labels), header)),
            ("/seg/colored", lambda: self._image(outputs.seg_colored, "rgb8", header)),
        ]
        if outputs.make_cloud is not None:
            builders.append(("/points", lambda: self._pointcloud2(outputs.make_cloud(), header)))
        try:
            for topic, build in builders:
                data = self._types.serialize_cdr(build(), TOPICS[topic])
                self._bag.write(self._connection(topic), frame.stamp_ns, data)
                del data
                self._counts[topic] = self._counts.get(topic, 0) + 1
        except OSError as exc:
            self.discard()
            raise OutputError(f"{self.path}: cannot write: {_reason(exc)}; nothing was kept") from None

    def _connection(self, topic: str) -> Any:
        """The topic's connection, declared on its first message."""
        connection = self._connections.get(topic)
        if connection is None:
            connection = self._bag.add_connection(topic, TOPICS[topic], typestore=self._types)
            self._connections[topic] = connection
        return connection

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


def _use_lz4_chunks(storage: Any) -> None:
    """Make rosbags' MCAP storage writer compress its chunks with LZ4 frames (MCAP's ``lz4``).

    rosbags writes zstd chunks only; its writer keeps the chunk codec in two attributes, set here.
    """
    import lz4.frame

    if not (hasattr(storage, "compressor") and hasattr(storage, "compression")):
        raise ValueError("this rosbags version cannot write lz4 MCAP chunks; use --compression zstd")
    storage.compression = "lz4"
    storage.compressor = lz4.frame.compress


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
    its index, stamp, frame_id, intrinsics, depth units and files, and ``run.json`` with ``notes``
    (and the per-kind counts), written when the folder is closed. The folder is built under a
    temporary name and moved to ``path`` (new, or an empty folder) when closed (see :class:`Writer`).
    """

    def __init__(self, path: str | Path, kinds: Iterable[str] = FILE_KINDS,
                 notes: Mapping[str, str] | None = None) -> None:
        self.path = Path(path)
        self.kinds = frozenset(kinds)
        self.notes = dict(notes or {})
        self.count = 0
        self._counts: dict[str, int] = {}
        self._index: Any = None
        self._stage: Any = None
        self._folder = self.path

    def __enter__(self) -> FilesWriter:
        from ..atomic import StagedOutput

        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise ValueError(f"{self.path}: exists already and is not an empty folder; choose a "
                             "new output path")
        try:
            self._stage = StagedOutput(self.path)
            self._folder = self._stage.folder / self.path.name
            self._folder.mkdir()
            self._index = (self._folder / "frames.jsonl").open("w", encoding="utf-8")
        except OSError as exc:
            self.discard()
            raise OutputError(f"{self.path}: cannot write here: {_reason(exc)}") from None
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None or issubclass(exc_type, KeyboardInterrupt):
            self.close()
        else:
            self.discard()

    def annotate(self, notes: Mapping[str, str]) -> None:
        """Add ``notes`` to ``run.json`` (and the PLY comments of later frames)."""
        self.notes.update({str(k): str(v) for k, v in notes.items()})

    def counts(self) -> dict[str, int]:
        """Files written per kind so far (``depth.npy`` → 12, ...)."""
        return dict(self._counts)

    def close(self) -> Path:
        """Write ``run.json``, then move the folder to :attr:`path`; safe to call twice."""
        index, self._index = self._index, None
        if index is None:
            return self.path
        try:
            index.close()
            run = {**self.notes, "files": self.counts()}
            (self._folder / "run.json").write_text(json.dumps(run, indent=2) + "\n", "utf-8")
            return self._stage.commit(self._folder)
        except OSError as exc:
            self.discard()
            raise OutputError(f"{self.path}: cannot finish writing: {_reason(exc)}; nothing was "
                              "kept") from None

    def discard(self) -> None:
        """Drop the folder being written."""
        index, self._index = self._index, None
        if index is not None:
            try:
                index.close()
            except OSError:
                pass
        if self._stage is not None:
            self._stage.discard()

    def write(self, outputs: FrameOutputs) -> None:
        """The files of one frame, then its line in ``frames.jsonl`` (flushed);
        :class:`OutputError` (and nothing kept) when they cannot be written."""
        if self._index is None:
            raise RuntimeError("FilesWriter is not open")
        try:
            self._write(outputs)
        except OSError as exc:
            self.discard()
            raise OutputError(f"{self.path}: cannot write: {_reason(exc)}; nothing was kept") from None

    def _write(self, outputs: FrameOutputs) -> None:
        stem = f"{outputs.frame.index:06d}"
        written: list[str] = []

        def target(suffix: str) -> Path:
            written.append(f"{stem}_{suffix}")
            self._counts[suffix] = self._counts.get(suffix, 0) + 1
            return self._folder / f"{stem}_{suffix}"

        if "png" in self.kinds:
            write_png(target("image.png"), outputs.frame.rgb)
            write_png(target("depth.png"), outputs.depth_colored)
            write_png(target("seg.png"), outputs.seg_colored)
            write_png(target("labels.png"), outputs.labels)
        if "npy" in self.kinds:
            np.save(target("depth.npy"), outputs.depth.astype(np.float32, copy=False))
            np.save(target("labels.npy"), outputs.labels)
        if "ply" in self.kinds and outputs.make_cloud is not None:
            write_ply(target("cloud.ply"), outputs.make_cloud(), comments=_comments(self.notes))
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
