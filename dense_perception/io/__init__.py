"""ROS-free message data ↔ NumPy conversions.

Functions here take *any* object with a ROS message's field names (rclpy messages, rosbags
dataclasses, simple namespaces), so the ROS nodes and the bag/CLI tools share one implementation.
Nothing in this package imports rclpy.
"""
