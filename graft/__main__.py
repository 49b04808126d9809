"""`python -m graft` (also what torchrun launches): the same as the `graft` command."""

import sys

from .cli import main

sys.exit(main())
