"""launch/perception.launch.py and config/ against the parameters the nodes declare.

No ROS graph and no ``launch``/``launch_ros`` needed: the launch file's node list is a plain
function (:func:`node_plans`), and the parameter tables are the nodes' own. The launch file is
also loaded by ``launch``/``launch_ros`` where they import (not on the Python package registries).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from dense_perception.ros.cloud_node import CLOUD_PARAMETERS
from dense_perception.ros.config_file import render_config
from dense_perception.ros.depth_node import DEPTH_LISTS, DEPTH_PARAMETERS
from dense_perception.ros.inference_node import node_parameters
from dense_perception.ros.perception import parse_options
from dense_perception.ros.seg_node import SEG_LISTS, SEG_PARAMETERS, SEG_QOS

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / "launch" / "perception.launch.py"
CONFIG = REPO / "config" / "perception.yaml"
RVIZ = REPO / "config" / "perception.rviz"
DECLARED = {
    "depth": node_parameters(DEPTH_PARAMETERS, DEPTH_LISTS),
    "seg": node_parameters(SEG_PARAMETERS, SEG_LISTS, SEG_QOS),
    "cloud": CLOUD_PARAMETERS,
}
REQUIRED_ARGUMENTS = {"image", "camera_info", "namespace", "config", "depth", "seg", "cloud",
                      "backend", "precision", "rviz"}


def load_launch_module():
    spec = importlib.util.spec_from_file_location("perception_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def launch_module():
    return load_launch_module()


def defaults(module, **changes) -> dict[str, str]:
    values = {name: default for name, default, _ in module.LAUNCH_ARGUMENTS}
    values.update(changes)
    return values


def test_launch_arguments_are_documented(launch_module):
    names = [name for name, _, _ in launch_module.LAUNCH_ARGUMENTS]
    assert REQUIRED_ARGUMENTS <= set(names) and len(names) == len(set(names))
    assert all(description for _, _, description in launch_module.LAUNCH_ARGUMENTS)


def test_default_is_one_process_with_the_packaged_config(launch_module):
    [plan] = launch_module.node_plans(defaults(launch_module), "/share/dense_perception")
    assert plan["executable"] == "perception" and "name" not in plan
    assert plan["parameters"] == ["/share/dense_perception/config/perception.yaml"]
    assert ("image", "/camera/image_raw") in plan["remappings"]
    assert ("image/compressed", "/camera/image_raw/compressed") in plan["remappings"]
    assert ("camera_info", "/camera/camera_info") in plan["remappings"]
    options = parse_options(plan["arguments"])  # what the executable makes of them
    assert (options.depth, options.seg, options.cloud) == (True, True, True)


def test_arguments_choose_nodes_overrides_and_rviz(launch_module):
    args = defaults(launch_module, seg="false", backend="onnxruntime", namespace="robot",
                    config="/my.yaml", image="/cam/image", rviz="true")
    plans = launch_module.node_plans(args, str(REPO))
    perception, rviz = plans
    assert parse_options(perception["arguments"]).seg is False
    assert perception["parameters"] == ["/my.yaml", {"backend": "onnxruntime"}]
    assert perception["namespace"] == "robot"
    assert ("image", "/cam/image") in perception["remappings"]
    assert rviz["executable"] == "rviz2" and Path(rviz["arguments"][1]) == RVIZ

    separate = launch_module.node_plans(dict(args, single_process="false", rviz="false"), "/s")
    assert [(p["executable"], p["name"]) for p in separate] == [("depth", "depth"),
                                                               ("cloud", "cloud")]
    assert separate[0]["parameters"] == ["/my.yaml", {"backend": "onnxruntime"}]
    assert separate[1]["parameters"] == ["/my.yaml"]  # cloud has no backend
    for name, text in (("depth", "false"), ("seg", "False"), ("cloud", "0")):
        args[name] = text
    with pytest.raises(ValueError, match="nothing to launch"):
        launch_module.node_plans(args, "/s")
    with pytest.raises(ValueError, match="true or false"):
        launch_module.node_plans(dict(args, depth="maybe"), "/s")


def test_rviz_without_rviz2_fails_before_anything_starts(launch_module):
    args = defaults(launch_module, rviz="true", namespace="robot1")
    with pytest.raises(ValueError, match="rviz2 is not installed.*nothing was started"):
        launch_module.node_plans(args, str(REPO), has_package=lambda name: name != "rviz2")
    plans = launch_module.node_plans(args, str(REPO), has_package=lambda name: True)
    assert plans[-1]["executable"] == "rviz2" and plans[-1]["namespace"] == "robot1"


def test_config_is_generated_from_the_parameter_tables():
    assert CONFIG.read_text() == render_config(), (
        "config/perception.yaml is stale: python -m dense_perception.ros.config_file > config/perception.yaml")


def test_config_sets_every_declared_parameter_with_a_valid_value():
    text = CONFIG.read_text()
    sections = yaml.safe_load(text)
    assert set(sections) == {f"/**/{node}" for node in DECLARED}
    for node, specs in DECLARED.items():
        values = sections[f"/**/{node}"]["ros__parameters"]
        assert set(values) == {spec.name for spec in specs}, node
        for spec in specs:
            value = values[spec.name]
            assert type(value) is type(spec.default), (node, spec.name, value)
            assert spec.check(value) is None, (node, spec.name, spec.check(value))
            assert value == spec.default, f"{node}.{spec.name}: config differs from the default"
    # a comment above every parameter line
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("    ") and not line.lstrip().startswith("#"):
            assert lines[index - 1].lstrip().startswith("#"), f"no comment above {line.strip()}"


def test_rviz_config_shows_our_topics():
    rviz = yaml.safe_load(RVIZ.read_text())
    displays = rviz["Visualization Manager"]["Displays"]
    topics = {(d["Class"], d["Topic"]["Value"]) for d in displays if "Topic" in d}
    # relative names: RViz runs in the nodes' namespace and finds them there
    assert ("rviz_default_plugins/Image", "depth/colored") in topics
    assert ("rviz_default_plugins/Image", "seg/colored") in topics
    clouds = [d for d in displays if d["Class"] == "rviz_default_plugins/PointCloud2"]
    assert {d["Topic"]["Value"] for d in clouds} == {"points"}
    assert {d["Color Transformer"] for d in clouds} == {"RGB8", "Intensity"}
    assert [d["Channel Name"] for d in clouds if d["Color Transformer"] == "Intensity"] == ["label"]


def test_launch_file_loads_with_launch_ros():
    pytest.importorskip("launch_ros", reason="launch_ros is not installed (not on PyPI; every "
                        "ROS 2 desktop install has it)")
    import launch

    if not hasattr(launch, "LaunchDescription"):  # the repository's launch/ folder, not `launch`
        pytest.skip("the ROS `launch` package is not installed")
    description = load_launch_module().generate_launch_description()
    declared = {argument.name for argument in description.get_launch_arguments()}
    assert REQUIRED_ARGUMENTS <= declared
