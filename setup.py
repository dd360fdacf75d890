"""dense_perception: an ament_python ROS 2 package that also installs with ``pip install -e .``."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "dense_perception"
# rmw-fastrtps-cpp is required: without it `import rclpy` fails (librmw_fastrtps_cpp.so missing).
ROS_JAZZY_WHEELS = [
    "ros-jazzy-rclpy==7.1.6",
    "ros-jazzy-rmw-fastrtps-cpp==8.4.3",
    "ros-jazzy-sensor-msgs==5.3.6",
    "ros-jazzy-std-msgs==5.3.6",
    "ros-jazzy-rcl-interfaces==2.0.3",
    "ros-jazzy-diagnostic-msgs==5.3.6",
    "ros-jazzy-visualization-msgs==5.3.6",
]

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Monocular depth (DPT), semantic segmentation (EDAFormer + ISR) and semantic point clouds for ROS 2",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(exclude=["test", "test.*", "bench"]),
    package_data={PACKAGE: ["data/sample.jpg", "data/LICENSE.md"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz") + glob("config/*.xml")),
    ],
    install_requires=[
        "setuptools",
        "numpy>=1.24",
        # OpenCV 5 from PyPI breaks a ROS install's cv_bridge (compiled against OpenCV 4).
        "opencv-python-headless>=4.8,<5",
        # Install torch first and pinned on machines without a GPU (pip install torch==2.13.0).
        "torch>=2.1",
        # bags and MCAP (CLI), CDR, and every ROS image encoding mapped to OpenCV conversions
        "rosbags>=0.10",
        "rosbags-image>=0.10",
        "onnx>=1.15",
        "onnxruntime>=1.17",
        "onnxconverter-common>=1.16",  # fp16 ONNX graphs with norms and softmax kept in fp32
        "tqdm>=4.60",
        "pillow>=9",  # reads a compressed image's size from its header before decoding it
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6.100", "transformers>=4.40", "catkin_pkg>=1.0", "matplotlib>=3.7",
                 "plyfile>=1.0"],
        # ROS 2 Jazzy's rclpy and messages as PyPI wheels, for machines without a ROS install
        # (shared/design/ros-testing.md). Inside a sourced ROS 2 installation do not install these.
        "ros-wheels": ROS_JAZZY_WHEELS,
    },
    zip_safe=True,
    maintainer="dense_perception maintainers",
    maintainer_email="maintainers@dense-perception.dev",
    entry_points={
        "console_scripts": [
            "dense-perception = dense_perception.cli:main",
            "depth = dense_perception.ros.depth_node:main",
            "seg = dense_perception.ros.seg_node:main",
            "cloud = dense_perception.ros.cloud_node:main",
            "perception = dense_perception.ros.perception:main",
        ],
    },
)
