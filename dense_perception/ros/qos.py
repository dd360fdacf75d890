"""QoS profiles of the nodes' inputs and outputs, configurable through read-only parameters.

Inputs follow the latest-frame policy: best effort, keep last, depth **1**, so a busy node never
works on a stale frame (``rclpy.qos.qos_profile_sensor_data`` keeps 5, which adds latency). Two nodes
keep more (:func:`qos_parameters`): the segmenter holds the last frames so that the frame the depth node
claims has reached it even when its executor lags under load, and the cloud node must lose none of
the messages it pairs. The latest-frame policy holds all the same: the worker takes the newest frame.
Outputs are reliable, keep last, depth 1 by default, which RViz and ``ros2 topic echo`` receive.
"""
from __future__ import annotations

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from .params import ParamSpec

_RELIABILITY = {
    "best_effort": ReliabilityPolicy.BEST_EFFORT,
    "reliable": ReliabilityPolicy.RELIABLE,
}


def qos_parameters(input_depth: int = 1, why: str = "1 = latest frame only") -> tuple[ParamSpec, ...]:
    """The QoS parameters a node declares (read-only: subscriptions are made at start-up), with the
    node's input history depth and the reason for it (shown by ``ros2 param describe``)."""
    return (
        ParamSpec("input_reliability", "best_effort",
                  "Reliability of the input subscriptions: best_effort (latest frame, drops allowed) "
                  "or reliable", read_only=True, choices=tuple(_RELIABILITY)),
        ParamSpec("input_depth", input_depth, f"History depth of the input subscriptions ({why})",
                  read_only=True, minimum=1, maximum=100),
        ParamSpec("output_reliability", "reliable",
                  "Reliability of the publishers: reliable (RViz default) or best_effort",
                  read_only=True, choices=tuple(_RELIABILITY)),
        ParamSpec("output_depth", 1, "History depth of the publishers", read_only=True,
                  minimum=1, maximum=100),
    )


#: The QoS parameters of a latest-frame node (depth).
QOS_PARAMETERS = qos_parameters()


def make_qos(reliability: str, depth: int) -> QoSProfile:
    """A keep-last, volatile profile; ``reliability`` is ``best_effort`` or ``reliable``."""
    if reliability not in _RELIABILITY:
        raise ValueError(
            f"reliability must be one of {', '.join(_RELIABILITY)}, got {reliability!r}")
    if depth < 1:
        raise ValueError(f"QoS depth must be >= 1, got {depth}")
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=_RELIABILITY[reliability], durability=DurabilityPolicy.VOLATILE)


def input_qos(reliability: str = "best_effort", depth: int = 1) -> QoSProfile:
    """The latest-frame input profile (best effort, keep last 1 by default)."""
    return make_qos(reliability, depth)


def output_qos(reliability: str = "reliable", depth: int = 1) -> QoSProfile:
    """The output profile (reliable, keep last 1 by default)."""
    return make_qos(reliability, depth)


def qos_from_parameters(node: Node) -> tuple[QoSProfile, QoSProfile]:
    """(input, output) profiles from a node that declared :func:`qos_parameters`."""
    def value(name: str):
        return node.get_parameter(name).value

    return (input_qos(value("input_reliability"), value("input_depth")),
            output_qos(value("output_reliability"), value("output_depth")))
