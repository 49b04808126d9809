"""Where graft's cache lives and what its folders are called: the one module that knows.

    <root>/                 $GRAFT_CACHE_DIR, else $XDG_CACHE_HOME/graft, else ~/.cache/graft
        <arch>-<key>/       a feature namespace (FeatureCache): shards + namespace.json + .extract.lock
        decoded/            photos decoded once (graft.data.decoded)
        pca/                PCA colour axes fitted on training sets (graft.train.augmentation)
        digests/            each photo folder's digest index (graft.data.digests): one .idx per folder
        engines/            backbones exported to ONNX for onnxruntime (graft.backbones.engine)
        demo-photos/        `graft demo`'s photo set (never pruned)

Every part can be recomputed; `graft cache` (graft.cache.admin) lists and prunes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

ENV = "GRAFT_CACHE_DIR"
DECODED = "decoded"
PCA = "pca"
DIGESTS = "digests"
ENGINES = "engines"
DEMO = "demo-photos"
NAMESPACE_FILE = "namespace.json"
EXTRACT_LOCK = ".extract.lock"  # held while a run computes missing entries (and by prune)
NAMESPACE_DIR = re.compile(r".+-[0-9a-f]{16}")  # what namespace_dir names look like


def default_cache_dir() -> Path:
    env = os.environ.get(ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "graft"


def cache_root(cache_dir=None) -> Path:
    """The cache a command uses: `cache_dir` if given (--cache-dir), else the default."""
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def namespace_dir(root, namespace: dict, fmt: int) -> Path:
    """`<root>/<arch>-<key>`: the key hashes everything that changes a cached row."""
    canonical = json.dumps({"format": fmt, **namespace}, sort_keys=True)
    key = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(namespace.get("arch", "features")))
    return Path(root).expanduser() / f"{slug}-{key}"


def touch(path) -> None:
    """Record a use of a cache file: its access time becomes now (mtime, which the decoded-photo
    cache checks for replacement, is kept). Best effort: a read-only cache stays as it is.

    Set explicitly because `noatime`/`relatime` mounts do not record reads; `graft cache prune`
    deletes the least recently used files first."""
    try:
        st = os.stat(path)
        os.utime(path, ns=(time.time_ns(), st.st_mtime_ns))
    except OSError:
        pass
