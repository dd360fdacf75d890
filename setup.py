"""dense_perception: an ament_python ROS 2 package that also installs with ``pip install -e .``."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "dense_perception"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Monocular depth (DPT), semantic segmentation (EDAFormer + ISR) and semantic point clouds for ROS 2",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(exclude=["test", "test.*", "bench"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz")),
    ],
    install_requires=[
        "setuptools",
        "numpy>=1.24",
        # OpenCV 5 from PyPI breaks a ROS install's cv_bridge (compiled against OpenCV 4).
        "opencv-python-headless>=4.8,<5",
        # Install torch first and pinned on machines without a GPU (pip install torch==2.13.0).
        "torch>=2.1",
    ],
    extras_require={
        "test": ["pytest>=7", "transformers>=4.40", "catkin_pkg>=1.0"],
    },
    zip_safe=True,
    maintainer="dense_perception maintainers",
    maintainer_email="maintainers@dense-perception.dev",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "dense-perception = dense_perception.cli:main",
        ],
    },
)
