"""Launch depth (DPT), seg (semantic segmentation: EDAFormer, SegFormer, PVT, HRViT, ViT-CoMer) and
cloud: by default all in one process (``perception``).

    ros2 launch dense_perception perception.launch.py image:=/camera/color/image_raw \\
        camera_info:=/camera/color/camera_info
    ros2 launch dense_perception perception.launch.py seg:=false backend:=onnxruntime rviz:=true

Arguments (``ros2 launch ... --show-args``) are listed in :data:`LAUNCH_ARGUMENTS`. Parameters come
from ``config`` (default: the package's ``config/perception.yaml``); ``backend`` and
``precision``, when given, override it for depth and seg. The node list is worked out by
:func:`node_plans`, a plain function of the argument values, so it is tested without ``launch``.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

PACKAGE = "dense_perception"

#: (name, default, description) of every launch argument.
LAUNCH_ARGUMENTS: tuple[tuple[str, str, str], ...] = (
    ("image", "/camera/image_raw", "Input image topic (sensor_msgs/Image); with the parameter "
     "compressed:=true the nodes subscribe <image>/compressed"),
    ("camera_info", "/camera/camera_info", "CameraInfo topic of that camera"),
    ("namespace", "", "Namespace of the nodes and their relative output topics"),
    ("config", "", "Parameter YAML file; empty = the package's config/perception.yaml"),
    ("depth", "true", "Run the depth node (DPT)"),
    ("seg", "true", "Run the seg node (semantic segmentation)"),
    ("cloud", "true", "Run the cloud node (semantic PointCloud2)"),
    ("backend", "", "Inference backend of depth and seg (auto, torch, onnxruntime, tensorrt); "
     "empty = from config"),
    ("precision", "", "Inference precision of depth and seg (fp32; fp16, bf16 on CUDA; int8 on the CPU "
     "through ONNX Runtime); empty = from config"),
    ("single_process", "true", "Run the nodes in one process (perception executable, arrays "
     "passed in memory); false = one process per node"),
    ("rviz", "false", "Start RViz with config/perception.rviz (in the nodes' namespace; needs rviz2)"),
)
NODES = ("depth", "seg", "cloud")
INFERENCE_NODES = ("depth", "seg")


def is_true(text: str) -> bool:
    """A launch argument's boolean value (true/false, also 1/0, yes/no)."""
    lowered = text.strip().lower()
    if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"expected true or false, got {text!r}")
    return lowered in ("true", "1", "yes")


def node_plans(args: Mapping[str, str], share_dir: str,
               has_package: Callable[[str], bool] = lambda _name: True) -> list[dict[str, Any]]:
    """The ``launch_ros.actions.Node`` keyword arguments for these launch argument values.

    ``ValueError`` (before anything starts) for values that cannot run, e.g. ``rviz:=true`` where
    ``has_package("rviz2")`` is false.
    """
    config = args["config"] or os.path.join(share_dir, "config", "perception.yaml")
    enabled = {name: is_true(args[name]) for name in NODES}
    if not any(enabled.values()):
        raise ValueError("nothing to launch: depth, seg and cloud are all false")
    if is_true(args["rviz"]) and not has_package("rviz2"):
        raise ValueError("rviz:=true, but rviz2 is not installed (sudo apt install "
                         "ros-$ROS_DISTRO-rviz2); nothing was started")
    overrides = {name: args[name] for name in ("backend", "precision") if args[name]}
    image = args["image"]
    common = {
        "package": PACKAGE, "namespace": args["namespace"], "output": "screen",
        "remappings": [("image", image), ("image/compressed", f"{image}/compressed"),
                       ("camera_info", args["camera_info"])],
    }
    plans: list[dict[str, Any]] = []
    if is_true(args["single_process"]):
        # No name: a node name remap would rename all three nodes of the process. Overrides given as
        # a dict apply to every node; the cloud node ignores those it does not declare.
        plans.append({**common, "executable": "perception",
                      "arguments": [arg for name in NODES
                                    for arg in (f"--{name}", str(enabled[name]).lower())],
                      "parameters": [config, overrides] if overrides else [config]})
    else:
        for name in (node for node in NODES if enabled[node]):
            extra = [overrides] if overrides and name in INFERENCE_NODES else []
            plans.append({**common, "executable": name, "name": name,
                          "parameters": [config] + extra})
    if is_true(args["rviz"]):
        plans.append({"package": "rviz2", "executable": "rviz2", "namespace": args["namespace"],
                      "output": "screen", "remappings": [],
                      "arguments": ["-d", os.path.join(share_dir, "config", "perception.rviz")]})
    return plans


def _installed(package: str) -> bool:
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix

    try:
        get_package_prefix(package)
    except PackageNotFoundError:
        return False
    return True


def _launch_setup(context, *_args, **_kwargs):
    from ament_index_python.packages import get_package_share_directory
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    values = {name: LaunchConfiguration(name).perform(context) for name, _, _ in LAUNCH_ARGUMENTS}
    plans = node_plans(values, get_package_share_directory(PACKAGE), _installed)
    return [Node(**plan) for plan in plans]


def generate_launch_description():
    """The entry point of ``ros2 launch``."""
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=description)
         for name, default, description in LAUNCH_ARGUMENTS]
        + [OpaqueFunction(function=_launch_setup)])
