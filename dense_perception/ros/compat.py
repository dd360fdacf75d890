"""rclpy names that moved between the distributions this package supports (Humble, Jazzy).

Humble (Ubuntu 22.04, JetPack 6) keeps the QoS event callbacks in ``rclpy.qos_event``; Iron and later
in ``rclpy.event_handler``. Everything else the nodes use has the same name on both.
"""
from __future__ import annotations

try:  # Iron, Jazzy and later
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import SubscriptionEventCallbacks  # type: ignore[no-redef]

__all__ = ["SubscriptionEventCallbacks"]
