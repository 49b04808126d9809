"""`python -m graft` (also what torchrun launches): the same as the `graft` command."""

import os
import sys

from graft.cli import main

status = main()
if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
    # Under torchrun each rank leaves without the interpreter's teardown: a rank done early (in a
    # head run rank 0 trains alone) aborted now and then in C++ destructors at exit ("terminate
    # called without an active exception") although it had left its process group
    # (tests/finetune/test_distributed.py). Everything graft writes is closed and renamed by now.
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
sys.exit(status)
