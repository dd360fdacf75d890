"""Image / CompressedImage message data → RGB arrays, for every supported encoding, and back."""
from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from dense_perception.io.images import (
    ImageFormatError,
    image_array,
    image_fields,
    image_to_rgb,
    message_to_rgb,
)

#: Known colours, as uniform blocks of a test image.
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def image_msg(pixels: np.ndarray, encoding: str, step: int | None = None,
              bigendian: bool = False) -> SimpleNamespace:
    """An Image-like message of ``pixels`` (stored as given), optionally with row padding."""
    height, width = pixels.shape[:2]
    row = pixels.astype(pixels.dtype.newbyteorder(">" if bigendian else "<")).reshape(height, -1)
    row_bytes = row.view(np.uint8).reshape(height, -1)
    step = step or row_bytes.shape[1]
    padded = np.full((height, step), 0xAB, dtype=np.uint8)  # garbage in the padding
    padded[:, : row_bytes.shape[1]] = row_bytes
    return SimpleNamespace(height=height, width=width, encoding=encoding, is_bigendian=bigendian,
                           step=step, data=padded.tobytes())


def block_image(height: int = 16, width: int = 16) -> np.ndarray:
    """RGB uint8 with four uniform quadrants: red, green / blue, white."""
    rgb = np.empty((height, width, 3), np.uint8)
    h2, w2 = height // 2, width // 2
    rgb[:h2, :w2], rgb[:h2, w2:], rgb[h2:, :w2], rgb[h2:, w2:] = RED, GREEN, BLUE, WHITE
    return rgb


def quadrant_centres(rgb: np.ndarray) -> np.ndarray:
    """The 2x2 pixels around the centre of each quadrant (far from colour edges)."""
    height, width = rgb.shape[:2]
    rows, cols = (height // 4, 3 * height // 4), (width // 4, 3 * width // 4)
    return np.array([[rgb[r - 1:r + 1, c - 1:c + 1].reshape(-1, 3) for c in cols] for r in rows])


def assert_blocks(rgb: np.ndarray, tolerance: int = 0) -> None:
    centres = quadrant_centres(rgb).astype(int)
    quadrants = [(0, 0), (0, 1), (1, 0), (1, 1)]
    for (r, c), colour in zip(quadrants, [RED, GREEN, BLUE, WHITE], strict=True):
        assert np.abs(centres[r, c] - np.array(colour)).max() <= tolerance, (r, c, centres[r, c])


@pytest.mark.parametrize("encoding, to_stored", [
    ("rgb8", lambda rgb: rgb),
    ("bgr8", lambda rgb: cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)),
    ("rgba8", lambda rgb: cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA)),
    ("bgra8", lambda rgb: cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)),
    ("rgb16", lambda rgb: rgb.astype(np.uint16) * 257),
])
def test_rgb_family_round_trips_exactly(encoding, to_stored):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(image_to_rgb(image_msg(to_stored(rgb), encoding)), rgb)


def test_mono8_is_grey_in_all_three_channels():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    rgb = image_to_rgb(image_msg(grey, "mono8"))
    assert rgb.shape == (3, 4, 3) and all(np.array_equal(rgb[..., i], grey) for i in range(3))


@pytest.mark.parametrize("bigendian", [False, True])
def test_mono16_is_scaled_to_8_bits_in_either_byte_order(bigendian):
    mono16 = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    rgb = image_to_rgb(image_msg(mono16, "mono16", bigendian=bigendian))
    assert rgb[0, :, 0].tolist() == [0, 1, 128, 255]


def test_big_endian_data_images_are_read_in_native_order():
    depth_mm = np.array([[1, 1000], [65535, 258]], dtype=np.uint16)
    assert np.array_equal(image_array(image_msg(depth_mm, "16UC1", bigendian=True)), depth_mm)
    depth_m = np.array([[0.5, np.nan], [2.25, 1e3]], dtype=np.float32)
    read = image_array(image_msg(depth_m, "32FC1", bigendian=True))
    assert read.dtype == np.float32 and np.array_equal(read, depth_m, equal_nan=True)


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
@pytest.mark.parametrize("bits", [8, 16])
def test_bayer_is_demosaiced_to_the_right_colours(pattern, bits):
    rgb = block_image()
    channel = {"r": 0, "g": 1, "b": 2}
    mosaic = np.empty(rgb.shape[:2], np.uint8)
    for index, colour in enumerate(pattern):  # the 2x2 cell, row-major
        row, col = divmod(index, 2)
        mosaic[row::2, col::2] = rgb[row::2, col::2, channel[colour]]
    stored = mosaic if bits == 8 else mosaic.astype(np.uint16) * 257
    assert_blocks(image_to_rgb(image_msg(stored, f"bayer_{pattern}{bits}")))


def bt601_yuv(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """Video-range BT.601 Y, U, V of an RGB colour (the test's independent ground truth)."""
    r, g, b = colour
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    return round(y), round(u), round(v)


@pytest.mark.parametrize("encoding, order", [
    ("yuv422", "UYVY"), ("uyvy", "UYVY"), ("yuv422_yuy2", "YUYV"), ("yuyv", "YUYV")])
@pytest.mark.parametrize("colour", [RED, GREEN, BLUE, WHITE])
def test_yuv422_variants_give_the_right_colour(encoding, order, colour):
    y, u, v = bt601_yuv(colour)
    sample = {"Y": y, "U": u, "V": v}
    macropixel = [sample[letter] for letter in order]  # two pixels in four bytes
    packed = np.tile(np.array(macropixel, np.uint8), (4, 3)).reshape(4, 6, 2)
    rgb = image_to_rgb(image_msg(packed, encoding))
    assert rgb.shape == (4, 6, 3)
    assert np.abs(rgb.astype(int) - np.array(colour)).max() <= 3


@pytest.mark.parametrize("encoding, pixels", [
    ("rgb8", np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)),
    ("32FC1", np.arange(6, dtype=np.float32).reshape(2, 3) / 4),
    ("yuv422", np.full((2, 4, 2), 128, np.uint8)),
])
def test_row_padding_is_skipped(encoding, pixels):
    plain = image_msg(pixels, encoding)
    padded = image_msg(pixels, encoding, step=plain.step + 5)
    assert np.array_equal(image_array(padded), image_array(plain))
    assert np.array_equal(image_array(plain).reshape(pixels.shape), pixels)


def test_compressed_images_decode_to_rgb():
    rgb = block_image(8, 8)
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    decoded = message_to_rgb(SimpleNamespace(format="png", data=png.tobytes()))
    assert np.array_equal(decoded, rgb)
    with pytest.raises(ImageFormatError, match="cannot decode"):
        message_to_rgb(SimpleNamespace(format="jpeg", data=b"not a jpeg"))


def test_rosbags_messages_are_read_too():
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    Image = store.types["sensor_msgs/msg/Image"]
    Header = store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]
    rgb = block_image(4, 4)
    fields = image_fields(rgb, "rgb8")
    msg = Image(header=Header(stamp=Time(sec=1, nanosec=2), frame_id="cam"), **fields)
    assert np.array_equal(image_to_rgb(msg), rgb)


@pytest.mark.parametrize("make_msg, reason", [
    (lambda: SimpleNamespace(height=0, width=0, encoding="rgb8", is_bigendian=0, step=0,
                             data=b""), "empty image"),
    (lambda: SimpleNamespace(height=2, width=3, encoding="rgb8", is_bigendian=0, step=8,
                             data=bytes(100)), "step 8 is smaller than width"),
    (lambda: SimpleNamespace(height=2, width=3, encoding="rgb8", is_bigendian=0, step=9,
                             data=bytes(17)), "data has 17 bytes, step\\*height needs 18"),
    (lambda: image_msg(np.zeros((2, 2), np.uint8), "fancy9"), "unsupported image encoding"),
    (lambda: image_msg(np.zeros((2, 2), np.uint16), "16UC1"), "16UC1 holds measurements"),
    (lambda: image_msg(np.zeros((2, 2), np.float32), "32FC1"), "32FC1 holds measurements"),
])
def test_bad_images_are_rejected_with_a_reason(make_msg, reason):
    with pytest.raises(ImageFormatError, match=reason) as error:
        image_to_rgb(make_msg())
    assert isinstance(error.value, ValueError) and "\n" not in str(error.value)


@pytest.mark.parametrize("encoding, array", [
    ("rgb8", np.arange(24, dtype=np.uint8).reshape(2, 4, 3)),
    ("mono8", np.arange(8, dtype=np.uint8).reshape(2, 4)),
    ("16UC1", np.array([[1, 256, 65535]], dtype=np.uint16)),
    ("32FC1", np.array([[0.5, np.nan], [np.inf, -1.0]], dtype=np.float32)),
])
def test_image_fields_round_trip(encoding, array):
    fields = image_fields(array, encoding)
    assert fields["step"] == array.shape[1] * array.itemsize * (3 if array.ndim == 3 else 1)
    assert fields["is_bigendian"] == 0 and fields["data"].dtype == np.uint8
    assert np.array_equal(image_array(SimpleNamespace(**fields)), array, equal_nan=True)


def test_image_fields_rejects_mismatched_arrays():
    with pytest.raises(ImageFormatError, match="needs dtype float32"):
        image_fields(np.zeros((2, 2), np.float64), "32FC1")
    with pytest.raises(ImageFormatError, match="shape"):
        image_fields(np.zeros((2, 2), np.uint8), "rgb8")
    with pytest.raises(ImageFormatError, match="cannot write encoding"):
        image_fields(np.zeros((2, 2), np.uint8), "bayer_rggb8")
