"""The run folder graft train writes and every other command reads: what is in it, how it is
saved and loaded, and what `--out` may be (store.py)."""
