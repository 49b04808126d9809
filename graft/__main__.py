"""`python -m graft` (also what torchrun launches): the same as the `graft` command."""

from graft.cli import run

run()
