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
* :func:`check_message_size` rejects an image larger than a pixel budget *before* anything is
  allocated for it (for a compressed image, from its header, read by Pillow without decoding).

Every encoding of ``sensor_msgs/image_encodings`` is either converted or rejected with a one-line
:class:`ImageFormatError`; nothing else escapes these functions for any message content.
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
    # YUV 4:2:0 semi-planar: a full-resolution Y plane, then interleaved chroma at half resolution
    # (height x 3/2 rows of width bytes; read by _yuv420_rows).
    "nv12": ("uint8", 1),
    "nv21": ("uint8", 1),
    # Data images (OpenCV type names, as in sensor_msgs/image_encodings): never colour.
    **{f"{bits}{kind}C{channels}": (dtype, channels)
       for bits, kind, dtype in ((8, "U", "uint8"), (8, "S", "int8"), (16, "U", "uint16"),
                                 (16, "S", "int16"), (32, "S", "int32"), (32, "F", "float32"),
                                 (64, "F", "float64"))
       for channels in (1, 2, 3, 4)},
}
#: Encodings that hold measurements (depth, labels), not colour: rejected by :func:`image_to_rgb`.
DATA_ENCODINGS = frozenset(name for name in PIXEL_LAYOUTS if name[0].isdigit())
#: Encodings of sensor_msgs/image_encodings known but not read here, with the reason.
UNSUPPORTED_ENCODINGS = {"nv24": "YUV 4:4:4 semi-planar (nv24) has no OpenCV conversion"}
#: Packed YUV 4:2:2 encodings: two pixels share their chroma, so the width must be even.
PACKED_YUV = frozenset({"yuv422", "uyvy", "yuv422_yuy2", "yuyv"})
#: Semi-planar YUV 4:2:0 encodings: the chroma plane has half the rows and columns.
SEMI_PLANAR_YUV = frozenset({"nv12", "nv21"})
#: Encodings :func:`image_fields` writes, with the array dtype and channels each needs.
WRITABLE_ENCODINGS: dict[str, tuple[str, int]] = {
    name: PIXEL_LAYOUTS[name] for name in ("rgb8", "mono8", "16UC1", "32FC1")
}
#: cv_bridge knows the packed YUV encodings by their older names.
_CV_BRIDGE_ALIASES = {"uyvy": "yuv422", "yuyv": "yuv422_yuy2"}


#: Largest input image (width x height) accepted by default, by the ROS nodes (``max_input_pixels``)
#: and the command line (``--max-input-pixels``): 4096 x 3072 (12.6 MP) covers 4K (UHD and DCI) cameras.
DEFAULT_MAX_INPUT_PIXELS = 4096 * 3072


class ImageFormatError(ValueError):
    """An image message that cannot be converted; the message is a one-line reason."""


def bytes_per_pixel(encoding: str) -> int:
    """Bytes one pixel takes in a message of this encoding (``ImageFormatError`` if unknown)."""
    dtype, channels = _layout(encoding)
    return np.dtype(dtype).itemsize * channels


def check_pixels(width: int, height: int, max_pixels: int | None, what: str = "image",
                 setting: str = "parameter max_input_pixels") -> None:
    """``ImageFormatError`` when a ``width`` x ``height`` image exceeds ``max_pixels`` (None: no limit);
    the message names ``setting``, where the limit is changed."""
    if max_pixels is not None and int(width) * int(height) > max_pixels:
        raise ImageFormatError(
            f"{what} of {width}x{height} = {int(width) * int(height):,} pixels exceeds the limit of "
            f"{max_pixels:,} pixels ({setting})")


def compressed_image_size(data: Any, fmt: str = "") -> tuple[int, int]:
    """(width, height) of a compressed image from its header alone (Pillow reads no pixel data).

    ``ImageFormatError`` when the header cannot be read (no data, unknown or broken format)."""
    import io

    from PIL import Image as PILImage, UnidentifiedImageError

    raw = _as_uint8(data)
    if raw.size == 0:
        raise ImageFormatError(f"compressed image ({fmt}) has no data")
    try:
        with PILImage.open(io.BytesIO(raw.tobytes())) as header:
            return int(header.size[0]), int(header.size[1])
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ImageFormatError(f"cannot read the compressed image's header (format {fmt!r}): "
                               f"{str(err).strip() or type(err).__name__}") from None
    except PILImage.DecompressionBombError as err:
        raise ImageFormatError(f"compressed image ({fmt}) is implausibly large: {err}") from None


def check_message_size(msg: Any, max_pixels: int | None,
                       setting: str = "parameter max_input_pixels") -> None:
    """Reject an Image or CompressedImage above ``max_pixels`` before it is decoded or copied."""
    if max_pixels is None:
        return
    if hasattr(msg, "format"):
        width, height = compressed_image_size(msg.data, str(msg.format))
        check_pixels(width, height, max_pixels, f"compressed image ({msg.format})", setting)
    else:
        check_pixels(int(msg.width), int(msg.height), max_pixels, setting=setting)


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
    if encoding in SEMI_PLANAR_YUV:
        if height % 2 or width % 2:
            raise ImageFormatError(f"{encoding} needs an even width and height, got {width}x{height}")
        height = height * 3 // 2  # the Y plane, then the half-height chroma plane
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


def _check_colour_layout(encoding: str, width: int) -> None:
    if encoding in UNSUPPORTED_ENCODINGS:
        raise ImageFormatError(f"unsupported image encoding {encoding!r}: {UNSUPPORTED_ENCODINGS[encoding]}")
    if encoding in PACKED_YUV and width % 2:
        raise ImageFormatError(f"{encoding} packs two pixels per chroma pair: the width must be even, "
                               f"got {width}")


def image_to_rgb(msg: Any) -> np.ndarray:
    """An Image message as RGB ``uint8`` ``[H, W, 3]`` (16-bit encodings scaled to 8 bits)."""
    encoding = str(msg.encoding)
    if encoding in DATA_ENCODINGS:
        raise ImageFormatError(
            f"encoding {encoding} holds measurements (depth/labels), not colour; "
            "send a colour encoding such as rgb8 or bgr8")
    _check_colour_layout(encoding, int(msg.width))
    pixels = image_array(msg)
    if encoding == "rgb8":
        return pixels
    try:
        rgb = _colour_converter()(pixels, encoding)
    except ImageFormatError:
        raise
    except Exception as err:  # noqa: BLE001 - an OpenCV assertion on odd content is a bad frame
        raise ImageFormatError(f"cannot convert {encoding} to rgb8: {type(err).__name__}: "
                               f"{str(err).strip().splitlines()[-1] if str(err).strip() else ''}") from None
    if rgb.shape != (int(msg.height), int(msg.width), 3) or rgb.dtype != np.uint8:
        raise ImageFormatError(f"converting {encoding} gave {rgb.dtype} {list(rgb.shape)}, not rgb8 "
                               f"{msg.height}x{msg.width}")
    return rgb


def compressed_image_to_rgb(msg: Any) -> np.ndarray:
    """A CompressedImage (JPEG, PNG, ... as OpenCV decodes them) as RGB ``uint8`` ``[H, W, 3]``."""
    import cv2

    data = _as_uint8(msg.data)
    if data.size == 0:
        raise ImageFormatError(f"compressed image ({msg.format}) has no data")
    try:
        decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)  # always 3-channel BGR, 8 bits
    except cv2.error as err:
        raise ImageFormatError(f"OpenCV cannot decode the compressed image (format {msg.format!r}): "
                               f"{str(err).strip().splitlines()[-1]}") from None
    if decoded is None or decoded.size == 0:
        raise ImageFormatError(f"OpenCV cannot decode the compressed image (format {msg.format!r})")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def message_to_rgb(msg: Any, max_pixels: int | None = None,
                   setting: str = "parameter max_input_pixels") -> np.ndarray:
    """RGB ``uint8`` ``[H, W, 3]`` from an Image or a CompressedImage (told apart by ``format``);
    images above ``max_pixels`` are rejected before they are decoded (:func:`check_message_size`;
    the message names ``setting``)."""
    check_message_size(msg, max_pixels, setting)
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
