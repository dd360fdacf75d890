"""Frame sources for the command line: an image, a folder of images, a video, a rosbag2 recording.

:func:`open_source` picks the reader from the path and returns a :class:`Source`; iterating
:meth:`Source.frames` yields one :class:`Frame` per input frame, or a :class:`BadFrame` for a frame
that cannot be decoded (the caller skips and counts it). An input that cannot be read at all raises
:class:`SourceError` with a one-line message naming the file and the reason.

Stamps (``Frame.stamp_ns``, nanoseconds):

* rosbag2: the image's header stamp (its log time when the header stamp is zero);
* video: ``index / fps`` from the video's frame rate (``fps`` when the video states none);
* images and folders: ``index / fps`` (``fps`` defaults to :data:`DEFAULT_FPS`), so a folder
  replays as a steady stream starting at time zero.

Only a rosbag2 carries camera intrinsics (``Frame.camera_info``); for the others it is None and the
caller chooses a camera model (see :func:`dense_perception.runner.default_camera`).

Images are decoded once, by OpenCV for files and by :func:`dense_perception.io.images.message_to_rgb`
for messages (every ROS colour encoding and CompressedImage).
"""
from __future__ import annotations

import bisect
import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, Union

import numpy as np

from .bags import BagReader, is_recording
from .images import (DEFAULT_MAX_INPUT_PIXELS, ImageFormatError, check_pixels, compressed_image_size,
                     message_to_rgb)

#: File name suffixes read as still images (OpenCV's ``imread``).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm",
                            ".pgm", ".pnm"})
#: Stamping rate of image folders, frames per second.
DEFAULT_FPS = 10.0
#: Default frame_id of frames from inputs without one (images, videos).
DEFAULT_FRAME_ID = "camera"
log = logging.getLogger(__name__)
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
_NS_PER_S = 1_000_000_000


class SourceError(ValueError):
    """An input that cannot be read; the message is one line: ``PATH: reason``."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


@dataclass(frozen=True)
class CameraInfoData:
    """The parts of a sensor_msgs/CameraInfo the pipeline uses and writes back, without ROS types."""

    width: int
    height: int
    k: tuple[float, ...]  # 9 values, row-major
    d: tuple[float, ...] = ()
    distortion_model: str = ""
    r: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    p: tuple[float, ...] = ()  # 12 values; empty = [K | 0]

    @classmethod
    def from_message(cls, msg: Any) -> CameraInfoData:
        """From a CameraInfo-like object (rosbags or rclpy; ROS 1's upper-case ``K, D, R, P`` too)."""

        def values(name: str) -> tuple[float, ...]:
            field_value = getattr(msg, name, None)
            if field_value is None:
                field_value = getattr(msg, name.upper())
            return tuple(float(v) for v in np.asarray(field_value).reshape(-1))

        return cls(width=int(msg.width), height=int(msg.height), k=values("k"), d=values("d"),
                   distortion_model=str(msg.distortion_model), r=values("r"), p=values("p"))

    def projection(self) -> tuple[float, ...]:
        """``P`` as 12 values: the recorded one, else ``[K | 0]``."""
        if len(self.p) == 12:
            return self.p
        k = self.k
        return (k[0], k[1], k[2], 0.0, k[3], k[4], k[5], 0.0, k[6], k[7], k[8], 0.0)


@dataclass(frozen=True)
class Frame:
    """One decoded input frame: RGB ``uint8`` ``[H, W, 3]`` with its stamp, frame and intrinsics."""

    rgb: np.ndarray
    stamp_ns: int
    frame_id: str
    camera_info: CameraInfoData | None
    index: int


@dataclass(frozen=True)
class BadFrame:
    """A frame of a readable input that could not be decoded; ``reason`` is one line."""

    index: int
    reason: str


FrameOrBad = Union[Frame, BadFrame]


class Source(Protocol):
    """What :func:`open_source` returns."""

    path: Path
    kind: str  # "image", "folder", "video", "rosbag2"

    def expected_frames(self) -> int | None:
        """How many items :meth:`frames` yields at most (None when unknown)."""

    def frames(self) -> Iterator[FrameOrBad]:
        """Frames in order; each item is a :class:`Frame` or a :class:`BadFrame`."""

    def describe(self) -> str:
        """One line for the run summary."""


def open_source(path: str | Path, topic: str | None = None, camera_info_topic: str | None = None,
                every: int = 1, fps: float | None = None, frame_id: str = DEFAULT_FRAME_ID,
                max_pixels: int | None = DEFAULT_MAX_INPUT_PIXELS) -> Source:
    """The source for ``path``, chosen by what it is (``SourceError`` when it cannot be read).

    A recording (:func:`~dense_perception.io.bags.is_recording`: a folder with ``metadata.yaml``,
    a file starting with MCAP's, SQLite's or ROS 1's magic bytes, or named ``.mcap``/``.db3``/
    ``.bag`` in any case) is read as a bag; another directory is a folder of images; a file with an
    image suffix is an image; any other file is opened as a video. ``every``: keep every
    ``every``-th frame (the first is kept). ``topic`` and ``camera_info_topic`` apply to bags;
    ``fps`` to images (and videos that state no rate). Frames above ``max_pixels`` pixels are
    refused, before they are decoded where the format allows (None: no limit).
    """
    path = Path(path)
    if every < 1:
        raise ValueError(f"--every must be at least 1, got {every}")
    if fps is not None and not fps > 0:
        raise ValueError(f"--fps must be positive, got {fps}")
    if not path.exists():
        raise SourceError(path, "no such file or directory")
    if is_recording(path):
        return BagSource(path, topic, camera_info_topic, every, max_pixels)
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        return FolderSource(path, every, fps or DEFAULT_FPS, frame_id, max_pixels)
    return VideoSource(path, every, fps, frame_id, max_pixels)


#: Where the command line's pixel limit is changed (named in the message of a rejected frame).
LIMIT_SETTING = "--max-input-pixels"


def read_image_rgb(path: Path, max_pixels: int | None = None) -> np.ndarray:
    """An image file as RGB ``uint8`` ``[H, W, 3]``; ``ValueError`` with the reason if unreadable or
    larger than ``max_pixels`` (checked from the file's header before decoding where Pillow reads
    it, else after)."""
    import cv2

    data = np.fromfile(path, dtype=np.uint8)  # np.fromfile + imdecode: non-ASCII paths work too
    if data.size == 0:
        raise ValueError("empty file")
    if max_pixels is not None:
        try:
            width, height = compressed_image_size(data, path.suffix.lstrip("."))
        except ImageFormatError:
            pass  # a format Pillow does not read: checked after decoding
        else:
            check_pixels(width, height, max_pixels, setting=LIMIT_SETTING)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    del data
    if bgr is None:
        raise ValueError("OpenCV cannot decode it as an image")
    check_pixels(bgr.shape[1], bgr.shape[0], max_pixels, setting=LIMIT_SETTING)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=bgr)  # in place: no second full-size copy


def _stamp(index: int, fps: float) -> int:
    return int(round(index * _NS_PER_S / fps))


@dataclass
class FolderSource:
    """One image file, or the image files of a folder in name order (other files are ignored)."""

    path: Path
    every: int = 1
    fps: float = DEFAULT_FPS
    frame_id: str = DEFAULT_FRAME_ID
    max_pixels: int | None = DEFAULT_MAX_INPUT_PIXELS
    files: list[Path] = field(init=False)

    def __post_init__(self) -> None:
        if self.path.is_dir():
            self.kind = "folder"
            self.files = sorted(p for p in self.path.iterdir()
                                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not self.files:
                raise SourceError(self.path, "folder holds no image files ("
                                  + ", ".join(sorted(IMAGE_SUFFIXES)) + ")")
        else:
            self.kind = "image"
            self.files = [self.path]
            try:  # a single image that cannot be read is an unreadable input, not a bad frame
                read_image_rgb(self.path, self.max_pixels)
            except (OSError, ValueError) as exc:
                raise SourceError(self.path, str(exc)) from None

    def expected_frames(self) -> int:
        return len(self.files[::self.every])

    def frames(self) -> Iterator[FrameOrBad]:
        for index in range(0, len(self.files), self.every):
            file = self.files[index]
            try:
                rgb = read_image_rgb(file, self.max_pixels)
            except (OSError, ValueError) as exc:
                yield BadFrame(index, f"{file.name}: {exc}")
                continue
            yield Frame(rgb, _stamp(index, self.fps), self.frame_id, None, index)

    def describe(self) -> str:
        what = "image" if self.kind == "image" else f"folder of {len(self.files)} images"
        return f"{self.path} ({what}, stamped at {self.fps:g} frames/s from 0)"


@dataclass
class VideoSource:
    """A video file OpenCV can open; frames stamped ``index / fps``."""

    path: Path
    every: int = 1
    fps: float | None = None
    frame_id: str = DEFAULT_FRAME_ID
    max_pixels: int | None = DEFAULT_MAX_INPUT_PIXELS

    def __post_init__(self) -> None:
        import cv2

        self.kind = "video"
        capture = cv2.VideoCapture(str(self.path))
        try:
            if not capture.isOpened():
                raise SourceError(self.path, "OpenCV cannot open it as a video (and its suffix is "
                                  "not an image's)")
            width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
            height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
            try:  # every frame would be refused: refuse the input before decoding one
                check_pixels(width, height, self.max_pixels, "video frame", LIMIT_SETTING)
            except ImageFormatError as exc:
                raise SourceError(self.path, str(exc)) from None
            ok, _ = capture.read()
            if not ok:
                raise SourceError(self.path, "video has no readable frame")
            stated = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
            self.count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        finally:
            capture.release()
        if self.fps is None:
            self.fps = stated if stated > 0 else 30.0

    def expected_frames(self) -> int | None:
        return len(range(0, self.count, self.every)) if self.count > 0 else None

    def frames(self) -> Iterator[FrameOrBad]:
        import cv2

        capture = cv2.VideoCapture(str(self.path))
        try:
            index = 0
            while True:
                if index % self.every:
                    if not capture.grab():
                        break
                    index += 1
                    continue
                ok, bgr = capture.read()
                if not ok:
                    if self.count and index < self.count:
                        yield BadFrame(index, "OpenCV could not decode the frame; stopping here")
                    break
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=bgr)
                yield Frame(rgb, _stamp(index, float(self.fps)), self.frame_id, None, index)
                index += 1
        finally:
            capture.release()

    def describe(self) -> str:
        return f"{self.path} (video, {self.fps:g} frames/s)"


@dataclass
class BagSource:
    """Image (or CompressedImage) messages of one topic of a recording: a rosbag2 (MCAP or
    sqlite3; a folder or a storage file) or a ROS 1 bag, read by :class:`~.bags.BagReader`.

    ``topic`` None: the only image topic of the bag. ``camera_info_topic`` None: ``camera_info``
    beside the image topic (``/cam/image_raw`` → ``/cam/camera_info``), else the bag's only
    CameraInfo topic, else none. Each image gets the camera_info with its stamp, else the latest
    one before it, else the first one. Topics whose message definitions cannot be parsed are
    skipped with one log line naming them; only the topics read need to parse.
    """

    path: Path
    topic: str | None = None
    camera_info_topic: str | None = None
    every: int = 1
    max_pixels: int | None = DEFAULT_MAX_INPUT_PIXELS

    def __post_init__(self) -> None:
        self.kind = "rosbag2"
        with self._reader() as reader:
            self.kind = "rosbag1" if reader.is_ros1 else "rosbag2"
            if reader.unparsed:
                log.warning("%s: skipping topics whose message definitions cannot be parsed: %s",
                            self.path, "; ".join(f"{t} ({why})" for t, why in reader.unparsed.items()))
            self.skipped_topics = dict(reader.unparsed)
            self.topic, self.count = self._choose_image_topic(reader)
            self.camera_info_topic = self._choose_info_topic(reader)
            self._infos = self._read_camera_infos(reader)

    @contextmanager
    def _reader(self) -> Iterator[BagReader]:
        """An open :class:`BagReader`, closed after; ``SourceError`` when the file cannot be read."""
        reader = BagReader(self.path)
        try:
            reader.__enter__()
        except Exception as exc:  # noqa: BLE001 - rosbags raises several unrelated types
            raise SourceError(self.path, f"cannot read as a bag: {_one_line(exc)}") from None
        try:
            yield reader
        finally:
            reader.close()

    def _unparsed_note(self, reader: BagReader, types: tuple[str, ...]) -> str:
        skipped = [t for t, why in reader.unparsed.items() if why.split(":", 1)[0] in types]
        return f"; unreadable definitions: {', '.join(skipped)}" if skipped else ""

    def _choose_image_topic(self, reader: BagReader) -> tuple[str, int]:
        images = {name: info for name, info in reader.topics.items() if info.msgtype in IMAGE_TYPES}
        listing = ", ".join(sorted(images)) or "none"
        if self.topic is not None:
            if self.topic not in images:
                why = reader.unparsed.get(self.topic)
                if why is not None:
                    raise SourceError(self.path, f"topic {self.topic}: its message definition cannot "
                                      f"be parsed ({why})")
                raise SourceError(self.path, f"no Image/CompressedImage topic {self.topic!r} "
                                  f"(image topics: {listing})")
            return self.topic, images[self.topic].count
        if len(images) != 1:
            reason = ("has no Image/CompressedImage topic" if not images
                      else f"has several image topics ({listing}); pick one with --topic")
            raise SourceError(self.path, reason + self._unparsed_note(reader, IMAGE_TYPES))
        topic = next(iter(images))
        return topic, images[topic].count

    def _choose_info_topic(self, reader: BagReader) -> str | None:
        infos = sorted(name for name, info in reader.topics.items() if info.msgtype == CAMERA_INFO_TYPE)
        if self.camera_info_topic is not None:
            if self.camera_info_topic not in infos:
                raise SourceError(self.path, f"no CameraInfo topic {self.camera_info_topic!r} "
                                  f"(CameraInfo topics: {', '.join(infos) or 'none'})")
            return self.camera_info_topic
        sibling = self.topic.rsplit("/", 1)[0] + "/camera_info"
        if sibling in infos:
            return sibling
        return infos[0] if len(infos) == 1 else None

    def _read_camera_infos(self, reader: BagReader) -> list[tuple[int, CameraInfoData]]:
        """Every camera_info of the chosen topic as (stamp, data), sorted by stamp (they are small)."""
        if self.camera_info_topic is None:
            return []
        deserialize = reader.deserializer([self.camera_info_topic])
        found: list[tuple[int, CameraInfoData]] = []
        for _, log_time, raw in reader.messages([self.camera_info_topic]):
            try:
                msg = deserialize(raw, CAMERA_INFO_TYPE)
                found.append((_header_stamp(msg.header) or log_time, CameraInfoData.from_message(msg)))
            except Exception:  # noqa: BLE001 - a broken camera_info is ignored, like a missing one
                continue
        found.sort(key=lambda item: item[0])
        return found

    def camera_info_for(self, stamp_ns: int) -> CameraInfoData | None:
        """The camera_info with this stamp, else the latest before it, else the first one."""
        if not self._infos:
            return None
        position = bisect.bisect_right([stamp for stamp, _ in self._infos], stamp_ns)
        return self._infos[max(position - 1, 0)][1]

    def expected_frames(self) -> int:
        return len(range(0, self.count, self.every))

    def frames(self) -> Iterator[FrameOrBad]:
        with self._reader() as reader:
            msgtype = reader.topics[self.topic].msgtype
            deserialize = reader.deserializer([self.topic])
            for index, (_, log_time, raw) in enumerate(reader.messages([self.topic])):
                if index % self.every:
                    continue
                try:
                    msg = deserialize(raw, msgtype)
                    rgb = message_to_rgb(msg, self.max_pixels, LIMIT_SETTING)
                    stamp = _header_stamp(msg.header) or int(log_time)
                    frame_id = str(msg.header.frame_id) or DEFAULT_FRAME_ID
                except Exception as exc:  # noqa: BLE001 - any decoding problem skips the frame
                    yield BadFrame(index, _one_line(exc))
                    continue
                yield Frame(rgb, stamp, frame_id, self.camera_info_for(stamp), index)

    def describe(self) -> str:
        info = (f"camera_info from {self.camera_info_topic}" if self.camera_info_topic
                else "no camera_info topic")
        skipped = (f"; skipped topics with unparseable definitions: {', '.join(self.skipped_topics)}"
                   if self.skipped_topics else "")
        return f"{self.path} ({self.kind}, {self.count} messages on {self.topic}, {info}{skipped})"


def _header_stamp(header: Any) -> int:
    return int(header.stamp.sec) * _NS_PER_S + int(header.stamp.nanosec)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def sample_image() -> AbstractContextManager[Path]:
    """The bundled sample photograph as a file path, for a ``with`` block (a zipped install
    extracts it to a temporary file). Source and licence: ``dense_perception/data/LICENSE.md``."""
    return resources.as_file(resources.files("dense_perception") / "data" / "sample.jpg")
