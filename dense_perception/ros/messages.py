"""rclpy message builders and readers, on top of the ROS-free helpers.

Image fields come from :func:`dense_perception.io.images.image_fields` and the PointCloud2 layout
from :func:`dense_perception.pipeline.cloud.cloud_fields`, so the bag writer and the PLY writer
produce the same bytes as these publishers.
"""
from __future__ import annotations

import array
from typing import Any

import numpy as np
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header

from ..io.images import image_fields, message_to_rgb
from ..pipeline.cloud import cloud_fields, pointcloud2_layout, scale_intrinsics


def byte_array(data: np.ndarray) -> array.array:
    """A ``uint8[]`` field value for rclpy (``array.array('B')``), copied in one block.

    rclpy checks every element of a list or ``bytes`` in Python; ``array.array`` is taken as is.
    """
    values = array.array("B")
    values.frombytes(memoryview(np.ascontiguousarray(data)).cast("B"))
    return values


def to_image_msg(pixels: np.ndarray, encoding: str, header: Header) -> Image:
    """An Image of ``pixels`` (rgb8 [H, W, 3] uint8, mono8 uint8, 16UC1 uint16, 32FC1 float32)."""
    fields = image_fields(pixels, encoding)
    msg = Image(header=header, height=fields["height"], width=fields["width"],
                encoding=fields["encoding"], is_bigendian=fields["is_bigendian"],
                step=fields["step"])
    msg.data = byte_array(fields["data"])
    return msg


def to_pointcloud2(cloud: np.ndarray, header: Header,
                   organized_shape: tuple[int, int] | None = None) -> PointCloud2:
    """A PointCloud2 of a cloud from :func:`~dense_perception.pipeline.cloud.build_cloud`.

    A 2-D cloud (or ``organized_shape`` = (height, width)) is published organised (``is_dense``
    False, NaN marks invalid points); a 1-D cloud holds valid points only (``is_dense`` True).
    """
    layout = pointcloud2_layout(cloud, organized_shape)
    data = layout.pop("data")
    msg = PointCloud2(header=header, fields=[
        PointField(name=field.name, offset=field.offset, datatype=int(field.datatype), count=field.count)
        for field in cloud_fields()], **layout)
    msg.data = byte_array(data)
    return msg


def camera_info_with_header(info: CameraInfo, header: Header) -> CameraInfo:
    """A copy of ``info`` stamped with ``header`` (stamp and frame_id of the image it describes)."""
    copied = CameraInfo()
    for name in CameraInfo.get_fields_and_field_types():
        setattr(copied, name, getattr(info, name))
    copied.header = header
    return copied


def camera_info_for_image(info: CameraInfo, header: Header, width: int, height: int) -> CameraInfo:
    """``info`` stamped with ``header`` and describing an image of ``width`` x ``height``: a camera_info
    of another size (not 0x0, "unknown") gets ``k`` and ``p`` rescaled to the image, as after a resize
    (the same field of view; :func:`~dense_perception.pipeline.cloud.scale_intrinsics`), and the image's
    size. Distortion, rectification, binning and ROI are copied unchanged."""
    copied = camera_info_with_header(info, header)
    from_size = (int(info.width), int(info.height))
    if from_size in ((width, height), (0, 0)):
        return copied
    sizes = (from_size, (width, height))
    K = np.asarray(info.k, dtype=np.float64).reshape(3, 3)
    if K[0, 0] > 0 and K[1, 1] > 0:  # an uncalibrated (all-zero) matrix stays as it is
        copied.k = scale_intrinsics(K, *sizes).reshape(-1).tolist()
    P = np.asarray(info.p, dtype=np.float64).reshape(3, 4)
    if P[0, 0] > 0 and P[1, 1] > 0:
        scaled = P.copy()
        scaled[:, :3] = scale_intrinsics(P[:, :3], *sizes)
        scaled[0, 3] *= width / from_size[0]  # Tx = -fx' * baseline
        scaled[1, 3] *= height / from_size[1]
        copied.p = scaled.reshape(-1).tolist()
    copied.width, copied.height = int(width), int(height)
    return copied


def image_to_rgb(msg: Image | CompressedImage) -> np.ndarray:
    """RGB ``uint8`` [H, W, 3] of an Image or CompressedImage (else ``ImageFormatError``)."""
    return message_to_rgb(msg)


def copy_header(header: Any) -> Header:
    """A new std_msgs/Header with the stamp and frame_id of ``header``."""
    copied = Header(frame_id=header.frame_id)
    copied.stamp.sec, copied.stamp.nanosec = header.stamp.sec, header.stamp.nanosec
    return copied

