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
from ..pipeline.cloud import CLOUD_DTYPE, POINT_STEP, cloud_fields


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
    msg = PointCloud2(
        header=header, height=height, width=width,
        fields=[PointField(name=field.name, offset=field.offset, datatype=int(field.datatype),
                           count=field.count) for field in cloud_fields()],
        is_bigendian=False, point_step=POINT_STEP, row_step=POINT_STEP * width,
        is_dense=organized_shape is None)
    # CLOUD_DTYPE is little-endian by construction, so the bytes are the message's data as they are.
    msg.data = byte_array(np.ascontiguousarray(cloud).reshape(-1).view(np.uint8))
    return msg


def camera_info_with_header(info: CameraInfo, header: Header) -> CameraInfo:
    """A copy of ``info`` stamped with ``header`` (stamp and frame_id of the image it describes)."""
    copied = CameraInfo()
    for name in CameraInfo.get_fields_and_field_types():
        setattr(copied, name, getattr(info, name))
    copied.header = header
    return copied


def image_to_rgb(msg: Image | CompressedImage) -> np.ndarray:
    """RGB ``uint8`` [H, W, 3] of an Image or CompressedImage (else ``ImageFormatError``)."""
    return message_to_rgb(msg)


def copy_header(header: Any) -> Header:
    """A new std_msgs/Header with the stamp and frame_id of ``header``."""
    copied = Header(frame_id=header.frame_id)
    copied.stamp.sec, copied.stamp.nanosec = header.stamp.sec, header.stamp.nanosec
    return copied

