"""Plumbing every layer may use: atomic writes, bounded regular-file reads, SHA-256 digests,
lazy imports, glibc malloc tuning. Nothing here knows about photos or networks."""
