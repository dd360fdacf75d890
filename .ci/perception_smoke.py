"""CI smoke test of the colcon install space: publish camera frames to a running `perception`
executable and wait until depth, labels and a point cloud come back (one frame is enough)."""
from __future__ import annotations

import sys
import time

import numpy as np
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

TIMEOUT_S = float(sys.argv[1]) if len(sys.argv) > 1 else 180.0


def main() -> int:
    rclpy.init()
    node = rclpy.create_node("perception_smoke")
    received: dict[str, object] = {}
    reliable = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
    for topic, kind in (("depth/image", Image), ("seg/labels", Image), ("points", PointCloud2)):
        node.create_subscription(kind, topic, lambda msg, t=topic: received.setdefault(t, msg), reliable)
    image_pub = node.create_publisher(Image, "image", 1)
    info_pub = node.create_publisher(CameraInfo, "camera_info", 1)
    height, width = 48, 64
    rgb = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline and len(received) < 3:
        stamp = node.get_clock().now().to_msg()
        info = CameraInfo(height=height, width=width, k=[50.0, 0, 32, 0, 50.0, 24, 0, 0, 1])
        info.header.stamp, info.header.frame_id = stamp, "camera_optical_frame"
        img = Image(height=height, width=width, encoding="rgb8", step=width * 3, data=rgb.tobytes())
        img.header = info.header
        info_pub.publish(info)
        image_pub.publish(img)
        end = time.monotonic() + 1.0
        while time.monotonic() < end and len(received) < 3:
            rclpy.spin_once(node, timeout_sec=0.1)
    node.destroy_node()
    rclpy.try_shutdown()
    missing = {"depth/image", "seg/labels", "points"} - set(received)
    if missing:
        print(f"perception smoke: no message on {sorted(missing)} within {TIMEOUT_S:.0f} s", file=sys.stderr)
        return 1
    depth = received["depth/image"]
    print(f"perception smoke: depth {depth.width}x{depth.height} {depth.encoding}, labels and "
          f"{received['points'].width * received['points'].height} points received")
    return 0


if __name__ == "__main__":
    sys.exit(main())
