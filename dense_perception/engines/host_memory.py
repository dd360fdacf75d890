"""Host memory for CPU inference: keep freed activation memory in the process between frames.

A CPU forward pass allocates and frees the same large activation buffers every frame. By default
glibc's malloc hands big blocks back to the kernel -- through ``mmap`` above its mmap threshold, by
trimming the heap top above its trim threshold, and by unmapping the per-thread arenas' sub-heaps --
so every frame page-faults its memory back in. For EDAFormer-T at 512×512 on this project's 2-core CPU
that is about 500,000 page faults and a fifth of the forward time (bench/RESULTS.md).
:func:`keep_freed_memory` sets glibc's documented ``mallopt`` knobs so freed memory stays in one heap
and is reused next frame -- the CPU counterpart of PyTorch's CUDA caching allocator, and what PyTorch's
CPU performance guide gets by preloading jemalloc or tcmalloc. The process then holds its peak working
set (up to :data:`TRIM_THRESHOLD` of free heap) instead of returning it between frames.

The torch engine applies it on the CPU; ONNX Runtime has its own arena and needs nothing. Set
``DENSE_PERCEPTION_MALLOC=system`` to leave malloc as it is (for instance when jemalloc or tcmalloc is
preloaded). Other C libraries (musl, macOS, Windows) are left alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

#: ``DENSE_PERCEPTION_MALLOC=system`` leaves malloc's settings alone
ENV = "DENSE_PERCEPTION_MALLOC"
# mallopt parameters, from glibc's <malloc.h>
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -2, -3, -8
#: blocks up to this size come from the heap, not from mmap (glibc's ceiling on 64-bit systems)
MMAP_THRESHOLD = 32 * 2**20
#: free memory at the heap top kept for the next frame rather than returned to the kernel
TRIM_THRESHOLD = 2**30
#: extra memory taken each time the heap grows: aligned allocations (torch's are 64-byte aligned) ask
#: for a little more than the block just freed and would otherwise grow the heap by fresh pages each time
TOP_PAD = 64 * 2**20


def keep_freed_memory() -> bool:
    """Tune glibc's malloc for repeated large allocations (see the module docstring); True when applied.

    One arena for threads started afterwards (``M_ARENA_MAX`` 1), and a top pad as large as a
    per-thread sub-heap, which stops glibc from unmapping emptied sub-heaps of arenas that threads made
    earlier: inference runs in worker threads. Idempotent and process-wide (malloc is)."""
    if os.environ.get(ENV, "").strip().lower() == "system":
        log.debug("%s=system: malloc left as it is", ENV)
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        applied = all(libc.mallopt(param, value) == 1 for param, value in (
            (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD),
            (M_ARENA_MAX, 1)))
    except (OSError, AttributeError) as exc:
        log.debug("malloc left as it is: %s", exc)
        return False
    if applied:
        log.debug("glibc malloc keeps freed memory for reuse (mmap threshold %d MiB, trim threshold %d MiB, "
                  "one arena); %s=system to leave it", MMAP_THRESHOLD >> 20, TRIM_THRESHOLD >> 20, ENV)
    return applied


def give_back_freed_memory() -> bool:
    """Return the free heap that :func:`keep_freed_memory` keeps to the kernel (glibc's
    ``malloc_trim(0)``); True when memory was released. For the moment before a large, one-off
    allocation — a 12-megapixel frame's 240 MB cloud copied by the storage writer — where the kept
    heap would add to the peak; the next frame faults its activation memory back in once."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError) as exc:
        log.debug("malloc_trim unavailable: %s", exc)
        return False
