"""dense_perception: monocular depth (DPT), semantic segmentation (EDAFormer with live ISR) and
semantic point clouds, as a ROS 2 package and a plain Python library.

Only ``dense_perception.ros`` imports rclpy; everything else runs without ROS.
"""
__version__ = "0.1.0"
