"""Camera images between two processes: how many arrive, with Fast DDS's defaults and with the
package's shared-memory profile (config/fastdds_large_images.xml).

A publisher process sends ``--frames`` best-effort rgb8 images at ``--rate`` Hz (keep-last 1, as a
camera driver and the nodes' latest-frame inputs do); a subscriber process counts what arrives and
the losses the middleware reports (the nodes count the same event on /diagnostics). Prints a table.

    python bench/bench_large_images.py [--sizes 640x480 1280x720 1920x1080] [--rate 20] [--frames 200]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "config" / "fastdds_large_images.xml"

ROLE = r"""
import array, json, sys, time
import rclpy
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from dense_perception.ros.compat import SubscriptionEventCallbacks
role, width, height, rate, frames = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
rclpy.init()
qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST)
node = rclpy.create_node("bench_" + role)
if role == "pub":
    publisher = node.create_publisher(Image, "bench_image", qos)
    while publisher.get_subscription_count() == 0:
        rclpy.spin_once(node, timeout_sec=0.05)
    time.sleep(1.0)
    msg = Image(height=height, width=width, encoding="rgb8", step=width * 3)
    msg.data = array.array("B", bytes(width * height * 3))
    for index in range(frames):
        msg.header.stamp.sec = index
        publisher.publish(msg)
        time.sleep(1.0 / rate)
    time.sleep(1.0)
else:
    received, lost = [], [0]
    events = SubscriptionEventCallbacks(message_lost=lambda info: lost.__setitem__(0, info.total_count))
    node.create_subscription(Image, "bench_image", lambda m: received.append(m.header.stamp.sec), qos,
                             event_callbacks=events)
    deadline = time.monotonic() + frames / rate + 20
    while time.monotonic() < deadline and (not received or received[-1] < frames - 1):
        rclpy.spin_once(node, timeout_sec=0.1)
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.1)
    print(json.dumps({"received": len(set(received)), "lost_events": lost[0]}))
"""


def measure(width: int, height: int, rate: float, frames: int, profile: bool, domain: int) -> dict:
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    env.pop("FASTRTPS_DEFAULT_PROFILES_FILE", None)
    if profile:
        env["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(PROFILE)
    args = [str(width), str(height), str(rate), str(frames)]
    subscriber = subprocess.Popen([sys.executable, "-c", ROLE, "sub", *args], env=env, stdout=subprocess.PIPE, text=True)
    publisher = subprocess.Popen([sys.executable, "-c", ROLE, "pub", *args], env=env)
    publisher.wait(timeout=frames / rate + 120)
    out, _ = subscriber.communicate(timeout=120)
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["640x480", "1280x720", "1920x1080"])
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--frames", type=int, default=200)
    args = parser.parse_args()
    print(f"best-effort rgb8 images, keep-last 1, {args.frames} frames at {args.rate:g} Hz, two processes")
    print(f"| size | MB/frame | Fast DDS defaults: received | lost (reported) | with {PROFILE.name}: received | lost |")
    print("|---|---|---|---|---|---|")
    domain = 150
    for size in args.sizes:
        width, height = (int(v) for v in size.split("x"))
        default = measure(width, height, args.rate, args.frames, False, domain)
        shm = measure(width, height, args.rate, args.frames, True, domain + 1)
        domain += 2
        print(f"| {size} | {width * height * 3 / 1e6:.2f} | {default['received']}/{args.frames} "
              f"| {default['lost_events']} | {shm['received']}/{args.frames} | {shm['lost_events']} |",
              flush=True)


if __name__ == "__main__":
    main()
