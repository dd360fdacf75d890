"""Depth image → semantic point cloud: the one cloud builder, shared by the ``cloud`` node and CLI.

Points are in the camera optical frame (REP 103: x right, y down, z forward), back-projected with
the pinhole intrinsics ``K`` of the (rectified) depth image:
``x = (u - cx) * z / fx``, ``y = (v - cy) * z / fy``, where ``(u, v)`` are pixel column and row.

A cloud is a NumPy structured array with the fixed layout :data:`CLOUD_DTYPE`
(x, y, z float32, rgb float32 holding packed ``0x00RRGGBB`` as RViz expects, label uint16; 20 bytes
a point). The offsets are the ones ``sensor_msgs_py.point_cloud2.create_cloud`` gives for the
PointFields of :func:`cloud_fields` (offset of each field as declared), with ``point_step=20`` so
points stay 4-byte aligned (``create_cloud`` without ``point_step`` packs them into 18 bytes). The
array's bytes are therefore exactly a PointCloud2's ``data`` (little-endian) and a binary PLY's
vertices.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NamedTuple

import numpy as np

#: Label of points from a frame without a label image.
NO_LABEL = 0xFFFF


class PointFieldType(IntEnum):
    """sensor_msgs/PointField datatype constants."""

    INT8 = 1
    UINT8 = 2
    INT16 = 3
    UINT16 = 4
    INT32 = 5
    UINT32 = 6
    FLOAT32 = 7
    FLOAT64 = 8


class CloudField(NamedTuple):
    """One PointField: name, byte offset in a point, datatype (:class:`PointFieldType`), count."""

    name: str
    offset: int
    datatype: PointFieldType
    count: int


_FIELDS = (
    CloudField("x", 0, PointFieldType.FLOAT32, 1),
    CloudField("y", 4, PointFieldType.FLOAT32, 1),
    CloudField("z", 8, PointFieldType.FLOAT32, 1),
    CloudField("rgb", 12, PointFieldType.FLOAT32, 1),
    CloudField("label", 16, PointFieldType.UINT16, 1),
)
#: Bytes per point (a PointCloud2's point_step).
POINT_STEP = 20
_NUMPY_TYPES = {PointFieldType.FLOAT32: "<f4", PointFieldType.UINT16: "<u2"}
#: The structured dtype of every cloud this module builds.
CLOUD_DTYPE = np.dtype({
    "names": [field.name for field in _FIELDS],
    "formats": [_NUMPY_TYPES[field.datatype] for field in _FIELDS],
    "offsets": [field.offset for field in _FIELDS],
    "itemsize": POINT_STEP,
})


def cloud_fields() -> tuple[CloudField, ...]:
    """The point fields of :data:`CLOUD_DTYPE`, in order (for PointCloud2 and PLY headers)."""
    return _FIELDS


def pointcloud2_layout(cloud: np.ndarray, organized_shape: tuple[int, int] | None = None) -> dict[str, Any]:
    """Every PointCloud2 field but ``header`` and ``fields`` for a cloud from :func:`build_cloud`.

    A 2-D cloud (or ``organized_shape`` = (height, width)) is organised (``is_dense`` False, NaN marks
    invalid points); a 1-D cloud holds valid points only (``is_dense`` True). ``data`` is the cloud's
    bytes (CLOUD_DTYPE is little-endian by construction). Shared by the ROS publisher and the bag writer.
    """
    if cloud.dtype != CLOUD_DTYPE:
        raise ValueError(f"cloud dtype {cloud.dtype} is not CLOUD_DTYPE")
    if organized_shape is None and cloud.ndim == 2:
        organized_shape = (int(cloud.shape[0]), int(cloud.shape[1]))
    if organized_shape is not None:
        height, width = organized_shape
        if height * width != cloud.size:
            raise ValueError(f"organized shape {organized_shape} does not hold {cloud.size} points")
    else:
        height, width = 1, int(cloud.size)
    return {"height": height, "width": width, "is_bigendian": False, "point_step": POINT_STEP,
            "row_step": POINT_STEP * width, "is_dense": organized_shape is None,
            "data": np.ascontiguousarray(cloud).reshape(-1).view(np.uint8)}


@dataclass(frozen=True)
class CameraModel:
    """Pinhole intrinsics of an image of ``width`` x ``height`` pixels."""

    K: np.ndarray  # [3, 3] float64
    width: int
    height: int

    @property
    def fx(self) -> float:
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        return float(self.K[1, 1])

    @property
    def cx(self) -> float:
        return float(self.K[0, 2])

    @property
    def cy(self) -> float:
        return float(self.K[1, 2])

    @classmethod
    def from_camera_info(cls, info: Any) -> CameraModel:
        """From a CameraInfo-like object (``k``: 9 values, row-major; ``width``; ``height``), checked
        by :func:`check_camera` (``ValueError`` with the reason)."""
        K = intrinsics_matrix(info.k)
        width, height = int(info.width), int(info.height)
        check_camera(K, width, height)
        return cls(K, width, height)

    def for_image(self, width: int, height: int) -> CameraModel:
        """This model for an image of another size (the same field of view, rescaled)."""
        if (self.width, self.height) == (width, height):
            return self
        K = scale_intrinsics(self.K, (self.width, self.height), (width, height))
        return CameraModel(K, width, height)


def intrinsics_matrix(k: Any) -> np.ndarray:
    """``K`` [3, 3] float64 from 9 row-major values; ``ValueError`` unless fx, fy > 0 and finite."""
    K = np.asarray(k, dtype=np.float64).reshape(-1)
    if K.size != 9:
        raise ValueError(f"camera matrix needs 9 values, got {K.size}")
    K = K.reshape(3, 3)
    if not np.all(np.isfinite(K)):
        raise ValueError("camera matrix has non-finite values")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"camera matrix has no focal length (fx={K[0, 0]}, fy={K[1, 1]}): "
                         "is the camera calibrated?")
    return K


#: Horizontal and vertical fields of view a camera model may have, degrees (exclusive bounds).
FOV_RANGE_DEG = (0.1, 179.0)
#: How far outside the image the principal point may lie, as a fraction of the image's side.
PRINCIPAL_POINT_MARGIN = 0.1


def check_camera(K: np.ndarray, width: int, height: int) -> None:
    """``ValueError`` naming the problem unless ``K`` can describe a ``width`` x ``height`` image: a
    positive size, finite focal lengths giving a field of view within :data:`FOV_RANGE_DEG` (so every
    back-projected point is finite) and a principal point on the image (within
    :data:`PRINCIPAL_POINT_MARGIN`, which a K of another resolution fails)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"camera_info has no image size ({width}x{height})")
    low, high = FOV_RANGE_DEG
    for name, focal, side in (("fx", K[0, 0], width), ("fy", K[1, 1], height)):
        fov = math.degrees(2.0 * math.atan2(side / 2.0, focal))
        if not low < fov < high:
            raise ValueError(f"{name} = {focal:g} gives a {fov:.3g} degree field of view over {side} "
                             f"pixels; expected {low:g}-{high:g} degrees")
    for name, centre, side in (("cx", K[0, 2], width), ("cy", K[1, 2], height)):
        margin = PRINCIPAL_POINT_MARGIN * side
        if not -margin <= centre <= side + margin:
            raise ValueError(f"{name} = {centre:g} lies outside the {width}x{height} image: K does not "
                             "match the camera_info's size")


def scale_intrinsics(K: np.ndarray, from_size: tuple[int, int],
                     to_size: tuple[int, int]) -> np.ndarray:
    """``K`` of an image resized from ``(width, height)`` = ``from_size`` to ``to_size``.

    Pixel centres are at integer coordinates (the ROS/OpenCV convention), so the principal point
    maps as ``c' = (c + 0.5) * s - 0.5`` (image_proc's resize uses ``c * s``, half a pixel apart
    at most by ``(s - 1) / 2``).
    """
    (from_w, from_h), (to_w, to_h) = from_size, to_size
    if min(from_w, from_h, to_w, to_h) <= 0:
        raise ValueError(f"cannot scale intrinsics from {from_size} to {to_size}")
    scale_x, scale_y = to_w / from_w, to_h / from_h
    scaled = np.array(K, dtype=np.float64, copy=True)
    scaled[0, 0] *= scale_x
    scaled[0, 1] *= scale_x
    scaled[1, 1] *= scale_y
    scaled[0, 2] = (K[0, 2] + 0.5) * scale_x - 0.5
    scaled[1, 2] = (K[1, 2] + 0.5) * scale_y - 0.5
    return scaled


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """RGB ``uint8`` [..., 3] → float32 [...] whose bits are ``0x00RRGGBB`` (PCL/RViz ``rgb``)."""
    rgb = rgb.astype(np.uint32, copy=False)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    return packed.astype("<u4", copy=False).view("<f4")


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """The inverse of :func:`pack_rgb`: float32 [...] → RGB ``uint8`` [..., 3]."""
    bits = np.ascontiguousarray(packed, dtype="<f4").view("<u4")
    channels = [(bits >> 16) & 0xFF, (bits >> 8) & 0xFF, bits & 0xFF]
    return np.stack(channels, axis=-1).astype(np.uint8)


def build_cloud(depth_m: np.ndarray, K: np.ndarray, rgb: np.ndarray | None = None,
                labels: np.ndarray | None = None, stride: int = 1, min_depth: float = 0.0,
                max_depth: float = math.inf, organized: bool = False) -> np.ndarray:
    """Back-project a depth image into a cloud of :data:`CLOUD_DTYPE`.

    ``depth_m``: [H, W] depth along the optical axis in metres; pixels that are not finite, not
    positive or outside ``[min_depth, max_depth]`` are invalid. ``K``: [3, 3] intrinsics of the
    depth image. ``rgb``: [H, W, 3] uint8 colour aligned with the depth (else rgb is 0, black).
    ``labels``: [H, W] integer class ids aligned with the depth (else :data:`NO_LABEL`).
    ``stride``: keep every ``stride``-th row and column.

    ``organized=False`` → a 1-D array of the valid points, row-major. ``organized=True`` → a 2-D
    array [ceil(H/stride), ceil(W/stride)] with x, y, z NaN at invalid pixels (not dense).
    """
    _check_inputs(depth_m, K, rgb, labels, stride, min_depth, max_depth)
    z = depth_m[::stride, ::stride].astype(np.float32)  # a copy: NaN is written into it
    rows = np.arange(0, depth_m.shape[0], stride, dtype=np.float32)
    cols = np.arange(0, depth_m.shape[1], stride, dtype=np.float32)
    # Per-column and per-row factors: x = z * (u - cx) / fx, y = z * (v - cy) / fy.
    x_per_z = ((cols - np.float32(K[0, 2])) / np.float32(K[0, 0]))[np.newaxis, :]
    y_per_z = ((rows - np.float32(K[1, 2])) / np.float32(K[1, 1]))[:, np.newaxis]
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(z) & (z > 0) & (z >= min_depth) & (z <= max_depth)
    x = z * x_per_z
    y = z * y_per_z
    with np.errstate(invalid="ignore"):
        valid &= np.isfinite(x) & np.isfinite(y)  # never a non-finite point, whatever K and z are
    packed_rgb = None if rgb is None else pack_rgb(rgb[::stride, ::stride])
    sampled_labels = None if labels is None else labels[::stride, ::stride]
    if organized:
        invalid = ~valid
        for coordinate in (x, y, z):
            coordinate[invalid] = np.nan
        return _fill_cloud(z.shape, x, y, z, packed_rgb, sampled_labels)
    keep = valid.reshape(-1)
    return _fill_cloud((int(np.count_nonzero(keep)),),
                       *(None if values is None else values.reshape(-1)[keep]
                         for values in (x, y, z, packed_rgb, sampled_labels)))


def _fill_cloud(shape: tuple[int, ...], x: np.ndarray, y: np.ndarray, z: np.ndarray,
                packed_rgb: np.ndarray | None, labels: np.ndarray | None) -> np.ndarray:
    cloud = np.zeros(shape, dtype=CLOUD_DTYPE)  # zeros: the padding bytes are written out too
    cloud["x"], cloud["y"], cloud["z"] = x, y, z
    cloud["rgb"] = 0.0 if packed_rgb is None else packed_rgb
    cloud["label"] = NO_LABEL if labels is None else labels
    return cloud


def _check_inputs(depth_m: np.ndarray, K: np.ndarray, rgb: np.ndarray | None,
                  labels: np.ndarray | None, stride: int, min_depth: float,
                  max_depth: float) -> None:
    if depth_m.ndim != 2 or depth_m.size == 0:
        raise ValueError(f"depth must be a non-empty [H, W] array, got shape {list(depth_m.shape)}")
    if not np.issubdtype(depth_m.dtype, np.floating):
        raise ValueError(f"depth must be float metres, got {depth_m.dtype}")
    if np.shape(K) != (3, 3):
        raise ValueError(f"K must be 3x3, got shape {list(np.shape(K))}")
    height, width = depth_m.shape
    if rgb is not None and (rgb.shape != (height, width, 3) or rgb.dtype != np.uint8):
        raise ValueError(f"rgb must be uint8 [{height}, {width}, 3] like the depth, "
                         f"got {rgb.dtype} {list(rgb.shape)}")
    if labels is not None and (labels.shape != (height, width)
                               or labels.dtype not in (np.uint8, np.uint16)):
        raise ValueError(f"labels must be uint8/uint16 [{height}, {width}] like the depth, "
                         f"got {labels.dtype} {list(labels.shape)}")
    if int(stride) != stride or stride < 1:
        raise ValueError(f"stride must be an integer >= 1, got {stride}")
    if not min_depth < max_depth:
        raise ValueError(f"min_depth ({min_depth}) must be below max_depth ({max_depth})")
