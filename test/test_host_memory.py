"""glibc malloc tuning for CPU inference (engines/host_memory.py): freed activation memory is reused
instead of page-faulted back in every frame. Measured by page-fault counts in a fresh process, not by
time (the speed-up is in bench/RESULTS.md)."""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

# Eight frames of EDAFormer-T at 256x256 through the torch engine in a worker thread (as in the ROS
# nodes); the child prints each frame's minor page faults.
CHILD = """
import json, resource, sys, threading
import torch
from dense_perception.engines.torch_engine import TorchEngine
from dense_perception.networks import build_network
torch.set_num_threads(2)
started = threading.Event()
def early():  # a thread with its own malloc arena from before the engine (DDS, executors)
    buffers = [bytearray(4096) for _ in range(64)]
    started.set()
if "early-threads" in sys.argv:
    threading.Thread(target=early).start()
    started.wait()
engine = TorchEngine(build_network("edaformer_t_ade20k").eval(), "cpu")
faults = []
def frames():
    x = torch.zeros(1, 3, 256, 256)
    with torch.inference_mode():
        for _ in range(8):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            engine.infer(x)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
worker = threading.Thread(target=frames)
worker.start()
worker.join()
print(json.dumps({"tuned": engine.host_memory_tuned, "faults": faults}))
"""


def steady(run: dict) -> float:
    """Median page faults of a frame once the first frames have settled the heap (frames 3 to 8)."""
    return statistics.median(run["faults"][2:])


def page_faults(*mode: str, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, *mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def untuned() -> dict:
    """The engine with the tuning left out (``DENSE_PERCEPTION_MALLOC=system``): the baseline. (Not the bare
    network: with torch's CUDA wheels the bare network's frames happen not to fault, the engine's do.)"""
    return page_faults(DENSE_PERCEPTION_MALLOC="system")


def test_the_tuning_can_be_left_out(untuned: dict) -> None:
    # untuned, every frame faults thousands of pages back in (measured: about 2,800 per frame with the
    # CPU and the CUDA wheels of torch 2.13)
    assert not untuned["tuned"] and steady(untuned) > 500, untuned


def test_the_cpu_torch_engine_keeps_freed_memory_for_the_next_frame(untuned: dict) -> None:
    tuned = page_faults()
    # tuned, after the first frames the heap holds what a frame needs: most frames fault nothing in (a frame
    # or two may still grow the heap by a few hundred pages); untuned, every frame faults ~1,000-2,800
    assert tuned["tuned"] and 5 * steady(tuned) < steady(untuned), (tuned, untuned)
    assert tuned["faults"][0] > 1000  # the first frame does fault its memory in
    # also when other threads made their own malloc arenas before the engine existed
    late = page_faults("early-threads")
    assert late["tuned"] and 5 * steady(late) < steady(untuned), (late, untuned)


TRIM_CHILD = """
import json
from dense_perception.engines.host_memory import give_back_freed_memory, keep_freed_memory
def rss_mib():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
assert keep_freed_memory()
blocks = [bytearray(8 * 2**20) for _ in range(40)]  # 320 MiB in heap blocks (below the mmap threshold)
used = rss_mib()
del blocks
kept = rss_mib()
released = give_back_freed_memory()
print(json.dumps({"used": used, "kept": kept, "after": rss_mib(), "released": released}))
"""


def test_freed_memory_kept_for_frames_is_given_back_before_a_large_write() -> None:
    out = subprocess.run([sys.executable, "-c", TRIM_CHILD], capture_output=True, text=True, check=True).stdout
    rss = json.loads(out.strip().splitlines()[-1])
    assert rss["kept"] > rss["used"] - 32, rss  # the tuned heap keeps the freed 320 MiB
    assert rss["released"] and rss["after"] < rss["kept"] - 256, rss  # malloc_trim hands it back
