"""ROS-free image-to-result steps: pre-processing, post-processing, colour, clouds."""
