"""Engine-cache faults with real ONNX Runtime graphs (EDAFormer-T, untrained, 64x64: a few seconds each):
a corrupted graph is rebuilt and serves the labels of a fresh run; foreign files, files writable by
others and symbolic links in the cache folder are refused; an unusable cache folder means no cache, not failures; two processes
draw the same untrained weights and share one cache entry."""
from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bag_fixtures import gradient_image
from dense_perception.api import Segmenter
from dense_perception.engines.cache import MANIFEST_SUFFIX, manifest_problem, write_manifest

REPO = Path(__file__).resolve().parents[1]
SIZE = (64, 64)


def segment(folder: Path, image: np.ndarray) -> np.ndarray:
    seg = Segmenter("edaformer_t_ade20k", backend="onnxruntime", input_size=SIZE, engine_dir=folder)
    return seg.predict(image).labels


def graphs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.onnx"))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return gradient_image(48, 64, 3)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, image) -> tuple[Path, np.ndarray]:
    """A cache folder holding one graph, and the labels of the run that made it."""
    folder = tmp_path_factory.mktemp("fresh_cache")
    labels = segment(folder, image)
    assert len(graphs(folder)) == 1 and (folder / (graphs(folder)[0].name + MANIFEST_SUFFIX)).is_file()
    return folder, labels


def copy_cache(source: Path, target: Path) -> Path:
    target.mkdir(mode=0o700)
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def test_corrupted_graph_is_rebuilt_and_labels_equal_a_fresh_run(fresh, image, tmp_path: Path, caplog) -> None:
    folder = copy_cache(fresh[0], tmp_path / "cache")
    (graph,) = graphs(folder)
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside an initializer: ONNX Runtime would load it and label differently
    graph.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        labels = segment(folder, image)
    assert "checksum mismatch with its manifest" in caplog.text
    np.testing.assert_array_equal(labels, fresh[1])
    assert graph.read_bytes() == graphs(fresh[0])[0].read_bytes()  # rebuilt, identical


def test_symlink_in_the_cache_is_refused_and_never_written_through(fresh, image, tmp_path: Path, caplog) -> None:
    folder = copy_cache(fresh[0], tmp_path / "cache")
    (graph,) = graphs(folder)
    planted = tmp_path / "planted.onnx"
    planted.write_bytes(graph.read_bytes())
    graph.unlink()
    graph.symlink_to(planted)
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(segment(folder, image), fresh[1])
    assert "symbolic link" in caplog.text and not graph.is_symlink()
    assert planted.read_bytes() == graph.read_bytes()  # the link's target was never written


def test_graph_or_manifest_writable_by_others_or_foreign_is_refused(fresh, tmp_path: Path) -> None:
    folder = copy_cache(fresh[0], tmp_path / "cache")
    (graph,) = graphs(folder)
    manifest = folder / (graph.name + MANIFEST_SUFFIX)
    assert manifest_problem(graph) is None
    graph.chmod(0o666)  # anyone could have rewritten it
    assert "writable by group and others" in manifest_problem(graph)
    graph.chmod(0o600)
    manifest.chmod(0o622)
    assert "its manifest is writable by group and others" in manifest_problem(graph)
    manifest.unlink()  # a graph the cache did not make (or whose manifest is gone)
    assert "no manifest" in manifest_problem(graph)
    if os.geteuid() == 0:
        write_manifest(graph, "onnx graph")
        os.chown(graph, 12345, -1)
        assert "owned by uid 12345" in manifest_problem(graph)


def test_unusable_cache_folder_means_no_cache_and_one_warning(fresh, image, tmp_path: Path, caplog) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING):
        first = segment(blocker / "cache", image)
        second = segment(blocker / "cache", image)
    np.testing.assert_array_equal(first, fresh[1])
    np.testing.assert_array_equal(second, fresh[1])
    assert len([r for r in caplog.records if "is not usable" in r.getMessage()]) == 1


_CHILD = """
import hashlib, sys
from bag_fixtures import gradient_image
from dense_perception.api import Segmenter
seg = Segmenter("edaformer_t_ade20k", backend="onnxruntime", input_size=(64, 64), engine_dir=sys.argv[1])
print(hashlib.sha256(seg.predict(gradient_image(48, 64, 3)).labels.tobytes()).hexdigest())
"""


def test_two_processes_give_identical_outputs_and_share_one_cache_entry(fresh, tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "test"),
                                                         os.environ.get("PYTHONPATH", "")])}
    digests = []
    for run in range(2):
        done = subprocess.run([sys.executable, "-c", _CHILD, str(folder)], capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=600)
        assert done.returncode == 0, done.stderr
        digests.append(done.stdout.strip())
        if run == 0:
            (graph,) = graphs(folder)
            made = graph.stat().st_mtime_ns
    assert digests[0] == digests[1] == hashlib.sha256(fresh[1].tobytes()).hexdigest()
    (graph,) = graphs(folder)
    assert graph.stat().st_mtime_ns == made  # the second process reused the first one's graph
