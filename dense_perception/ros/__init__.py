"""ROS 2 nodes and their plumbing: the only package of dense_perception that imports rclpy.

* :mod:`.messages` — NumPy arrays ↔ sensor_msgs (Image, PointCloud2, CameraInfo), via the ROS-free
  helpers in :mod:`dense_perception.io.images` and :mod:`dense_perception.pipeline.cloud`.
* :mod:`.qos` — the input (latest frame) and output QoS profiles, from parameters.
* :mod:`.params` — parameters declared from a declarative table, with descriptors and validation.
* :mod:`.sync` — an exact-stamp matcher and a latest-frame worker thread.
* :mod:`.runtime` — ``main()`` plumbing: init, spin, clean shutdown on SIGINT/SIGTERM.
* :mod:`.cloud_node` — the ``cloud`` node: depth (+ colour, labels) → PointCloud2.
"""
