"""The ROS package manifest is valid for catkin_pkg (else colcon treats us as plain Python)."""
from __future__ import annotations

import re
from pathlib import Path

from catkin_pkg.package import parse_package

REPO = Path(__file__).resolve().parents[1]


def test_package_xml_is_a_valid_ament_python_package() -> None:
    pkg = parse_package(str(REPO / "package.xml"))
    pkg.validate()  # raises InvalidPackage, e.g. on a malformed maintainer e-mail
    assert pkg.name == "dense_perception" and pkg.package_format == 3
    assert [e.content for e in pkg.exports if e.tagname == "build_type"] == ["ament_python"]
    exec_deps = {d.name for d in pkg.exec_depends}
    assert {"rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "vision_msgs", "cv_bridge", "launch",
            "launch_ros", "python3-numpy", "python3-opencv", "python3-pil", "python3-torch"} <= exec_deps
    assert {d.name for d in pkg.test_depends} == {"python3-pytest"}


def test_ament_resource_marker_and_rclpy_confinement() -> None:
    assert (REPO / "resource" / "dense_perception").is_file()
    package = REPO / "dense_perception"
    importing = re.compile(r"^\s*(import|from)\s+rclpy\b", re.M)
    offenders = [str(p.relative_to(REPO)) for p in package.rglob("*.py")
                 if p.relative_to(package).parts[0] != "ros" and importing.search(p.read_text())]
    assert not offenders, f"rclpy imported outside dense_perception/ros/: {offenders}"


def _python_3_10() -> str | None:
    """A working Python 3.10 interpreter: on PATH, or one pyenv installed (its shim may not select it)."""
    import glob
    import os
    import shutil
    import subprocess

    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = [shutil.which("python3.10"), *sorted(glob.glob(f"{root}/versions/3.10*/bin/python3.10"))]
    for candidate in filter(None, candidates):
        try:
            if subprocess.run([candidate, "--version"], capture_output=True, timeout=10).returncode == 0:
                return candidate
        except OSError:
            continue
    return None


def test_package_compiles_under_python_3_10() -> None:
    """Humble on Ubuntu 22.04 / JetPack 6 runs Python 3.10: no syntax of later versions."""
    import subprocess

    import pytest

    python310 = _python_3_10()
    if python310 is None:
        pytest.skip("no Python 3.10 interpreter here (Humble's Python); nothing to compile with")
    files = [str(path) for path in sorted((REPO / "dense_perception").rglob("*.py"))]
    files.append(str(REPO / "launch" / "perception.launch.py"))
    script = "import ast, sys\nfor f in sys.argv[1:]:\n    ast.parse(open(f, encoding='utf-8').read(), f)\n"
    result = subprocess.run([python310, "-c", script, *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
