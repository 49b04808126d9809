"""Leaving the process once a command is done, without the interpreter's teardown.

Why: after `graft train` had printed its summary, Python spent 0.5-1.1 s freeing torch's,
onnxruntime's and timm's modules object by object before the shell got its prompt back (a
predict, a warm rerun: a fifth of their wall time; bench/exit_teardown.py), and under torchrun a
rank done early aborted now and then in C++ destructors there ("terminate called without an
active exception"; tests/finetune/test_distributed.py). What the teardown does that matters is
done here first, in the interpreter's own order: threading's exit hooks run and non-daemon
threads are joined, atexit handlers run (temporary folders, multiprocessing's children, logging's
flush), the standard streams are flushed; then os._exit. Every file graft writes is closed and
renamed before its command returns.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn


def leave(status: int | None) -> NoReturn:
    """Exit with `status` (None: 0) as sys.exit would, less the freeing of every module."""
    # CPython's own first two steps at exit, in its order: threading's exit hooks (an idle
    # ThreadPoolExecutor's workers are told to stop; joining them without that waits forever),
    # then every non-daemon thread joined; then the atexit handlers
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader gone, a closed stream: nothing left to deliver
            pass
    os._exit(int(status or 0))
