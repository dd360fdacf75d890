"""``frame_budget_ms`` on the real seg and depth nodes: set live through the parameter service, the
node steps to faster settings, the ISR parameters follow what serves, /diagnostics shows the budget,
and bad budgets or hand-set ISR values while a budget rules are rejected with the reason."""
from __future__ import annotations

import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from ros_fixtures import ros_context, ros_environment  # noqa: F401
from sensor_msgs.msg import Image

from dense_perception.networks.isr import ISRSetting
from dense_perception.ros.depth_node import DepthNode
from dense_perception.ros.seg_node import SegNode

from test_depth_seg_nodes import bgr8_image, harness, overrides  # noqa: F401


def stream_until(graph, topic: str, condition, timeout_s: float = 90.0) -> bool:
    """Send frames one after the other until ``condition()`` (each waits for its output)."""
    deadline = time.monotonic() + timeout_s
    sec = 100
    while time.monotonic() < deadline:
        count = len(graph.received[topic])
        graph.image_pub.publish(bgr8_image(sec))
        graph.next(topic, count + 1, timeout_s=60.0)
        sec += 1
        if condition():
            return True
    return False


def diagnostics_of(graph, node: str) -> dict[str, str]:
    values = [dict((kv.key, kv.value) for kv in status.values)
              for msg in graph.received["/diagnostics"] for status in msg.status
              if status.name.startswith(f"/{node}")]
    return values[-1] if values else {}


def test_seg_budget_steps_down_the_isr_ladder_and_the_parameters_follow(ros_context, harness):
    seg = SegNode(context=ros_context, parameter_overrides=overrides(
        input_size=[64, 64], publish_colored=False, diagnostics_period=0.2))
    graph = harness([seg], {"seg/labels": Image, "/diagnostics": DiagnosticArray})
    for bad, reason in (("-5.0", "range"), (".nan", "out of range"), ("0.5", "below anything")):
        result = graph.set_parameter("seg", "frame_budget_ms", bad)
        assert not result.successful and reason in result.reason, result.reason
    accepted = graph.set_parameter("seg", "frame_budget_ms", "1.0")  # no setting can hold 1 ms
    assert accepted.successful, accepted.reason
    seg.predictor.governor.dwell_s = 0.2  # step quickly (the default 2 s would make this slow)
    assert stream_until(graph, "seg/labels", lambda: seg.segmenter.isr != ISRSetting())
    served = seg.segmenter.isr
    assert list(seg.get_parameter("isr_encoder").value) == list(served.encoder)
    assert list(seg.get_parameter("isr_decoder").value) == list(served.decoder)
    refused = graph.set_parameter("seg", "isr_ratio", "2")
    assert not refused.successful and "frame budget chooses the ISR setting" in refused.reason
    assert graph.spin_until(lambda: diagnostics_of(graph, "seg").get("frame budget") == "1 ms")
    assert diagnostics_of(graph, "seg").get("budget held") is not None

    assert graph.set_parameter("seg", "frame_budget_ms", "0.0").successful  # off: ISR is mine again
    assert seg.predictor.governor is None
    assert graph.set_parameter("seg", "isr_ratio", "1").successful


def test_depth_budget_serves_a_smaller_input_size(ros_context, harness):
    depth = DepthNode(context=ros_context, parameter_overrides=overrides(
        input_size=[64, 64], publish_colored=False, frame_budget_ms=1.0))
    graph = harness([depth], {"depth/image": Image})
    depth.predictor.governor.dwell_s = 0.2
    assert stream_until(graph, "depth/image",
                        lambda: depth.predictor.budget_state.served == (32, 32))
    metres = np.frombuffer(bytes(graph.received["depth/image"][-1].data), np.float32)
    assert metres.size == 48 * 64 and np.isfinite(metres).all()  # still the image's size


def test_a_whole_number_budget_is_taken_as_a_float(ros_context, harness):
    """``ros2 param set /seg frame_budget_ms 150`` sends an integer, as ``frame_budget_ms: 150`` in a
    YAML file gives one: both are a budget of 150 ms, not a type error. Not a number: rejected."""
    seg = SegNode(context=ros_context, parameter_overrides=overrides(
        input_size=[64, 64], publish_colored=False, frame_budget_ms=150))
    assert seg.predictor.governor.budget_s == 0.15
    graph = harness([seg], {"seg/labels": Image})
    result = graph.set_parameter("seg", "frame_budget_ms", "200")
    assert result.successful, result.reason
    assert seg.predictor.governor.budget_s == 0.2
    assert isinstance(seg.get_parameter("frame_budget_ms").value, int)  # stored as sent ...
    for text in ("fast", "true"):
        refused = graph.set_parameter("seg", "frame_budget_ms", text)
        assert not refused.successful and "frame_budget_ms must be a number" in refused.reason
    assert seg.predictor.governor.budget_s == 0.2  # ... and a refused value changes nothing
    assert graph.set_parameter("seg", "frame_budget_ms", "0").successful
    assert seg.predictor.governor is None  # 0 = off
