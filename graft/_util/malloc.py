"""Keep glibc's malloc from returning big tensor buffers to the OS after every forward pass.

By default glibc serves allocations above a dynamic threshold with mmap and trims the heap top
eagerly, so each CPU forward pass of a ConvNet page-faults its activation buffers in anew.
Raising the mmap and trim thresholds (and the top pad) makes the allocator keep and reuse them:
`bench/malloc_tuning.py` measures EfficientNet-Lite0's CPU forward pass with and without this.
No library exposes mallopt, hence ctypes. Set GRAFT_NO_MALLOPT=1 to skip it.
"""

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

_applied = False


def tune_malloc() -> bool:
    """Apply the thresholds once per process; returns True when glibc accepted them."""
    global _applied
    if _applied:
        return True
    if os.environ.get("GRAFT_NO_MALLOPT") or not sys.platform.startswith("linux"):
        return False
    try:  # the process's own symbols include its libc's: no library search (ctypes.util runs
        mallopt = ctypes.CDLL(None).mallopt  # a subprocess, a third of `graft --help`'s time)
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    ok = all(
        mallopt(opt, value) == 1
        for opt, value in (
            (M_MMAP_THRESHOLD, 1 << 30),
            (M_TRIM_THRESHOLD, 1 << 30),
            (M_TOP_PAD, 1 << 28),
        )
    )
    _applied = ok
    return ok
