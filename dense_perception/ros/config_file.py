"""``config/perception.yaml``, written from the nodes' parameter tables (the one source of truth).

Every parameter with its default and its description as a comment, ``[read-only]`` where it needs a
restart. Regenerate the file after changing a table::

    python -m dense_perception.ros.config_file > config/perception.yaml

(the tests compare the file with :func:`render_config`).
"""
from __future__ import annotations

import json
from collections.abc import Sequence

from .cloud_node import CLOUD_PARAMETERS
from .depth_node import DEPTH_LISTS, DEPTH_PARAMETERS
from .inference_node import node_parameters
from .params import ParamSpec
from .seg_node import SEG_LISTS, SEG_PARAMETERS, SEG_QOS

HEADER = """\
# Parameters of the dense_perception nodes: depth (DPT), seg (EDAFormer, SegFormer, PVT, HRViT, ViT-CoMer) and cloud.
# Used by launch/perception.launch.py (argument config:=...) for the one-process `perception`
# executable and for the separate `depth`, `seg`, `cloud` executables alike: each node reads its
# own section, in any namespace (/**/<node name>).
#
# [read-only] parameters need a restart; the others can be changed at run time, e.g.
#   ros2 param set /seg isr_ratio 2
# and are validated first (an invalid value is rejected with the reason).
# Empty lists ([]) mean "not set". `ros2 param set` cannot send an empty integer list: to go back
# to isr_ratio, set isr_encoder / isr_decoder to [0].
# seg also has a read-only `class_names` parameter, filled in by the node from its network
# (not set here).
# Without a checkpoint the networks run untrained random weights (outputs are meaningless).
# Generated from the nodes' parameter tables: python -m dense_perception.ros.config_file
"""

#: Each node's parameters, in the order they appear in the file.
NODE_PARAMETERS: dict[str, tuple[ParamSpec, ...]] = {
    "depth": node_parameters(DEPTH_PARAMETERS, DEPTH_LISTS),
    "seg": node_parameters(SEG_PARAMETERS, SEG_LISTS, SEG_QOS),
    "cloud": CLOUD_PARAMETERS,
}


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def render_section(node: str, specs: Sequence[ParamSpec]) -> str:
    lines = [f"/**/{node}:", "  ros__parameters:"]
    for spec in specs:
        note = " [read-only]" if spec.read_only else ""
        lines.append(f"    # {spec.description}{note}")
        lines.append(f"    {spec.name}: {_value(spec.default)}")
    return "\n".join(lines) + "\n"


def render_config() -> str:
    """The whole file."""
    return HEADER + "".join("\n" + render_section(node, specs) for node, specs in NODE_PARAMETERS.items())


if __name__ == "__main__":
    print(render_config(), end="")
