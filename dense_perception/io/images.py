"""sensor_msgs/Image and CompressedImage data ↔ NumPy arrays, without ROS.

A message is *any* object with the ROS field names: ``height, width, encoding, is_bigendian, step,
data`` for an Image, ``format, data`` for a CompressedImage. That covers rclpy messages, rosbags
dataclasses and plain namespaces alike.

* :func:`image_array` reads the pixels as they are (row padding removed, native byte order), for
  data images (32FC1 depth, mono8/16UC1 labels) and as the first step of colour conversion.
* :func:`image_to_rgb` / :func:`compressed_image_to_rgb` / :func:`message_to_rgb` give RGB ``uint8``
  ``[H, W, 3]`` for every colour encoding listed in :data:`PIXEL_LAYOUTS`. Colour conversion
  (YUV 4:2:2, Bayer demosaicing, 16 → 8 bits) is done by cv_bridge where it is installed and
  otherwise by ``rosbags-image`` (OpenCV colour conversion codes); neither is re-implemented here.
* :func:`image_fields` is the reverse: an array → the Image fields, shared by the ROS publisher and
  the rosbags writer.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

#: encoding → (element dtype, channels) of the pixel data as stored in the message.
PIXEL_LAYOUTS: dict[str, tuple[str, int]] = {
    "rgb8": ("uint8", 3),
    "bgr8": ("uint8", 3),
    "rgba8": ("uint8", 4),
    "bgra8": ("uint8", 4),
    "rgb16": ("uint16", 3),
    "bgr16": ("uint16", 3),
    "rgba16": ("uint16", 4),
    "bgra16": ("uint16", 4),
    "mono8": ("uint8", 1),
    "mono16": ("uint16", 1),
    # YUV 4:2:2, two bytes per pixel. ROS: "yuv422" is UYVY, "yuv422_yuy2" is YUYV.
    "yuv422": ("uint8", 2),
    "uyvy": ("uint8", 2),
    "yuv422_yuy2": ("uint8", 2),
    "yuyv": ("uint8", 2),
    **{f"bayer_{pattern}{bits}": ("uint8" if bits == 8 else "uint16", 1)
       for pattern in ("rggb", "bggr", "gbrg", "grbg") for bits in (8, 16)},
    # Data images: never colour.
    "8UC1": ("uint8", 1),
    "16UC1": ("uint16", 1),
    "32FC1": ("float32", 1),
}
#: Encodings that hold measurements (depth, labels), not colour: rejected by :func:`image_to_rgb`.
DATA_ENCODINGS = frozenset({"8UC1", "16UC1", "32FC1"})
#: Encodings :func:`image_fields` writes, with the array dtype and channels each needs.
WRITABLE_ENCODINGS: dict[str, tuple[str, int]] = {
    name: PIXEL_LAYOUTS[name] for name in ("rgb8", "mono8", "16UC1", "32FC1")
}
#: cv_bridge knows the packed YUV encodings by their older names.
_CV_BRIDGE_ALIASES = {"uyvy": "yuv422", "yuyv": "yuv422_yuy2"}


class ImageFormatError(ValueError):
    """An image message that cannot be converted; the message is a one-line reason."""


def bytes_per_pixel(encoding: str) -> int:
    """Bytes one pixel takes in a message of this encoding (``ImageFormatError`` if unknown)."""
    dtype, channels = _layout(encoding)
    return np.dtype(dtype).itemsize * channels


def image_array(msg: Any) -> np.ndarray:
    """The pixels of an Image message as stored: ``[H, W]`` or ``[H, W, C]``, native byte order.

    Row padding (``step > width * bytes_per_pixel``) is dropped and big-endian data is swapped.
    The result never aliases the message buffer. Raises :class:`ImageFormatError` for an unknown
    encoding, an empty image, a too-small ``step`` or too little data.
    """
    encoding = str(msg.encoding)
    dtype_name, channels = _layout(encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = width * np.dtype(dtype_name).itemsize * channels
    if height <= 0 or width <= 0:
        raise ImageFormatError(f"empty image ({width}x{height}, encoding {encoding})")
    if step < row_bytes:
        raise ImageFormatError(
            f"step {step} is smaller than width*bytes_per_pixel = {row_bytes} ({encoding})")
    data = _as_uint8(msg.data)
    if data.size < step * height:
        raise ImageFormatError(
            f"data has {data.size} bytes, step*height needs {step * height} ({encoding})")
    rows = data[: step * height].reshape(height, step)[:, :row_bytes]
    byte_order = ">" if msg.is_bigendian else "<"
    stored = np.dtype(dtype_name).newbyteorder(byte_order)
    pixels = np.ascontiguousarray(rows).view(stored).astype(np.dtype(dtype_name), copy=True)
    shape = (height, width) if channels == 1 else (height, width, channels)
    return pixels.reshape(shape)


def image_to_rgb(msg: Any) -> np.ndarray:
    """An Image message as RGB ``uint8`` ``[H, W, 3]`` (16-bit encodings scaled to 8 bits)."""
    encoding = str(msg.encoding)
    if encoding in DATA_ENCODINGS:
        raise ImageFormatError(
            f"encoding {encoding} holds measurements (depth/labels), not colour; "
            "send a colour encoding such as rgb8 or bgr8")
    pixels = image_array(msg)
    if encoding == "rgb8":
        return pixels
    return _colour_converter()(pixels, encoding)


def compressed_image_to_rgb(msg: Any) -> np.ndarray:
    """A CompressedImage (JPEG, PNG, ... as OpenCV decodes them) as RGB ``uint8`` ``[H, W, 3]``."""
    import cv2

    data = _as_uint8(msg.data)
    if data.size == 0:
        raise ImageFormatError(f"compressed image ({msg.format}) has no data")
    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)  # always 3-channel BGR, 8 bits
    if decoded is None:
        raise ImageFormatError(f"OpenCV cannot decode the compressed image (format {msg.format!r})")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def message_to_rgb(msg: Any) -> np.ndarray:
    """RGB ``uint8`` ``[H, W, 3]`` from an Image or a CompressedImage (told apart by ``format``)."""
    if hasattr(msg, "format"):
        return compressed_image_to_rgb(msg)
    return image_to_rgb(msg)


def image_fields(array: np.ndarray, encoding: str) -> dict[str, Any]:
    """The Image fields for ``array`` in ``encoding`` (one of :data:`WRITABLE_ENCODINGS`).

    Returns ``height, width, encoding, is_bigendian, step, data``; ``data`` is a 1-D contiguous
    ``uint8`` array in little-endian order with no row padding (rosbags takes it as is; rclpy
    wants it wrapped in ``array.array('B')``).
    """
    if encoding not in WRITABLE_ENCODINGS:
        raise ImageFormatError(
            f"cannot write encoding {encoding!r}; supported: {', '.join(WRITABLE_ENCODINGS)}")
    dtype_name, channels = WRITABLE_ENCODINGS[encoding]
    expected_ndim = 2 if channels == 1 else 3
    if array.ndim != expected_ndim or (channels > 1 and array.shape[2] != channels):
        raise ImageFormatError(
            f"{encoding} needs an array of shape {'[H, W]' if channels == 1 else '[H, W, 3]'}, "
            f"got {list(array.shape)}")
    if array.dtype != np.dtype(dtype_name):
        raise ImageFormatError(f"{encoding} needs dtype {dtype_name}, got {array.dtype}")
    height, width = array.shape[:2]
    if height == 0 or width == 0:
        raise ImageFormatError(f"empty image ({width}x{height}, encoding {encoding})")
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return {
        "height": int(height),
        "width": int(width),
        "encoding": encoding,
        "is_bigendian": 0,
        "step": int(width * array.dtype.itemsize * channels),
        "data": little.reshape(-1).view(np.uint8),
    }


def _layout(encoding: str) -> tuple[str, int]:
    try:
        return PIXEL_LAYOUTS[encoding]
    except KeyError:
        raise ImageFormatError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(PIXEL_LAYOUTS)}"
        ) from None


def _as_uint8(data: Any) -> np.ndarray:
    """Message data (bytes, array.array, NumPy array, list of ints) as a flat uint8 array."""
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:  # a list or another sequence without the buffer protocol
        return np.asarray(data, dtype=np.uint8).reshape(-1)


ColourConverter = Callable[[np.ndarray, str], np.ndarray]


def _colour_converter() -> ColourConverter:
    """cv_bridge's converter where it is installed (a ROS install), else rosbags-image's."""
    try:
        from cv_bridge.boost.cv_bridge_boost import cvtColor2  # noqa: F401
    except ImportError:
        return _convert_with_rosbags
    return _convert_with_cv_bridge


def _convert_with_cv_bridge(pixels: np.ndarray, encoding: str) -> np.ndarray:
    from cv_bridge.boost.cv_bridge_boost import cvtColor2

    try:
        return np.asarray(cvtColor2(pixels, _CV_BRIDGE_ALIASES.get(encoding, encoding), "rgb8"))
    except Exception:  # noqa: BLE001 - a cv_bridge built for another OpenCV/NumPy; fall back
        return _convert_with_rosbags(pixels, encoding)


def _convert_with_rosbags(pixels: np.ndarray, encoding: str) -> np.ndarray:
    try:
        from rosbags.image.image import ImageError, convert_color
    except ImportError as err:
        raise ImageFormatError(
            f"converting {encoding} to rgb8 needs cv_bridge or rosbags-image "
            "(pip install rosbags-image)") from err
    try:
        rgb = convert_color(pixels, encoding, "rgb8")
    except ImageError as err:
        raise ImageFormatError(f"cannot convert {encoding} to rgb8: {err}") from err
    return np.ascontiguousarray(rgb, dtype=np.uint8)
