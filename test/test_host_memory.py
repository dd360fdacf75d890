"""glibc malloc tuning for CPU inference (engines/host_memory.py): freed activation memory is reused
instead of page-faulted back in every frame. Measured by page-fault counts in a fresh process, not by
time (the speed-up is in bench/RESULTS.md)."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

# Five frames of EDAFormer-T at 256x256 in a worker thread (as in the ROS nodes), either through the
# torch engine or the plain network; the child prints each frame's minor page faults.
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
net = build_network("edaformer_t_ade20k").eval()
engine = TorchEngine(net, "cpu") if sys.argv[1] == "engine" else None
faults = []
def frames():
    x = torch.zeros(1, 3, 256, 256)
    with torch.inference_mode():
        for _ in range(5):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            engine.infer(x) if engine else net(x)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
worker = threading.Thread(target=frames)
worker.start()
worker.join()
print(json.dumps({"tuned": engine.host_memory_tuned if engine else False, "faults": faults}))
"""


def page_faults(*mode: str, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, *mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_the_cpu_torch_engine_keeps_freed_memory_for_the_next_frame() -> None:
    plain = page_faults("plain")
    tuned = page_faults("engine")
    # untuned, every frame faults thousands of pages back in (measured: about 3,000 per frame)
    assert not plain["tuned"] and sum(plain["faults"][2:]) > 1000, plain
    # tuned, after the first frames the heap holds what a frame needs (measured: 0-128 faults per frame)
    assert tuned["tuned"] and 10 * sum(tuned["faults"][2:]) < sum(plain["faults"][2:]), (tuned, plain)
    assert tuned["faults"][0] > 1000  # the first frame does fault its memory in
    # also when other threads made their own malloc arenas before the engine existed
    late = page_faults("engine", "early-threads")
    assert late["tuned"] and 10 * sum(late["faults"][2:]) < sum(plain["faults"][2:]), (late, plain)


def test_the_tuning_can_be_left_out() -> None:
    left = page_faults("engine", DENSE_PERCEPTION_MALLOC="system")
    assert not left["tuned"] and sum(left["faults"][2:]) > 1000, left


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
