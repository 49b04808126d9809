"""What this CPU computes natively, read once from Linux's /proc/cpuinfo (elsewhere: nothing)."""

from __future__ import annotations

import functools


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU announces AVX512-BF16 or AMX-BF16: without them bfloat16 is emulated,
    slower than float32, so graft keeps float32 (fine-tuning's autocast, the views' engine)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False
