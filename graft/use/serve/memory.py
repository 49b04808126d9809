"""Giving memory back after big requests.

graft tunes glibc's malloc to keep freed buffers for the next forward pass (graft/_util/malloc.py:
trim and mmap thresholds of 1 GB), which is right for a training loop and wrong for a server: a
64-megapixel photo decodes to 192 MB, freed blocks of that size stay in the heap of whichever
thread decoded it, and the server grew from 140 MB to 1.6 GB and stayed there (issue 22, finding
16). After a request of many pixels, once no decoder is busy, `malloc_trim(0)` returns the free
pages of every arena to the system. Elsewhere than glibc it does nothing."""

from __future__ import annotations

import ctypes
import sys

TRIM_AFTER_PIXELS = 16_000_000  # a request of this many pixels or more is followed by a trim

_trim = None


def malloc_trim() -> bool:
    """Return free heap pages to the system; True where glibc did."""
    global _trim
    if _trim is None:
        try:
            _trim = ctypes.CDLL(None).malloc_trim if sys.platform.startswith("linux") else False
        except (OSError, AttributeError):  # musl and others have no malloc_trim
            _trim = False
    return bool(_trim and _trim(0))
