"""Where graft's cache lives and what its folders are called: the one module that knows.

    <root>/                 $GRAFT_CACHE_DIR, else $XDG_CACHE_HOME/graft, else ~/.cache/graft
        <arch>-<key>/       a feature namespace (FeatureCache): shards + namespace.json + .extract.lock,
                            and skipped.jsonl (the files extraction could not use)
        decoded/            photos decoded once (graft.data.decoded)
        pca/                PCA colour axes fitted on training sets (graft.recipe.augmentation)
        digests/            each photo folder's digest index (graft.data.digests): one .idx per folder
        engines/            backbones exported to ONNX for onnxruntime (graft.backbones.engine)
        heads/              heads chosen by cross-validation, by the digest of their inputs (graft.heads.search)
        previews/           the report's augmentation previews, by the digest of their inputs (graft.report.gallery)
        demo-photos/        `graft demo`'s photo set (never pruned)

Every part can be recomputed; `graft cache` (graft.cache.admin) lists and prunes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import time
from pathlib import Path

from graft.errors import GraftError

ENV = "GRAFT_CACHE_DIR"
DECODED = "decoded"
PCA = "pca"
DIGESTS = "digests"
ENGINES = "engines"
HEADS = "heads"
PREVIEWS = "previews"
DEMO = "demo-photos"
NAMESPACE_FILE = "namespace.json"
EXTRACT_LOCK = ".extract.lock"  # held while a run computes missing entries (and by prune)
SKIPPED = "skipped.jsonl"  # a namespace's files that could not be extracted, one JSON line each
NAMESPACE_DIR = re.compile(r".+-[0-9a-f]{16}")  # what namespace_dir names look like
# `decoded/` and `pca/` carry this file from their creation: `graft cache prune` deletes in them
# only what graft names its own files, and only in a folder that says graft made it (or, for caches
# made before the marker, one already holding files with graft's names: see graft.cache.admin)
MARKER = ".graft-cache"
# graft's names for its files: decoded photos `<ab>/<sha256 ab...>-r<k>.sha256.npy` (`.npy`, earlier
# format), PCA fits `<16 hex>.json`, and the temp files of either while written
OWN_FILES = {
    DECODED: re.compile(r"(?P<d>[0-9a-f]{2})/(?P=d)[0-9a-f]{62}-r\d+(\.sha256)?\.npy"),
    PCA: re.compile(r"[0-9a-f]{16}\.json"),
}
OWN_TEMP = {DECODED: re.compile(r"[0-9a-f]{2}/\.tmp-[0-9a-f]{32}\.npy"),
            PCA: re.compile(r"\.tmp-[a-z0-9_]{8}\.json")}  # graft._util.atomic's (tempfile.mkstemp's)


def default_cache_dir() -> Path:
    env = os.environ.get(ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "graft"


def cache_root(cache_dir=None) -> Path:
    """The cache a command uses: `cache_dir` if given (--cache-dir), else the default. A
    GraftError if it, or a folder above it, is a file: no cache could ever be made there."""
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    p = root
    while True:
        try:
            st = os.stat(p)
        except (FileNotFoundError, NotADirectoryError):  # made when first written: the first part that exists decides
            if p == p.parent:
                return root
            p = p.parent
            continue
        except OSError:  # cannot tell (no permission to look): the first write will say
            return root
        if stat.S_ISDIR(st.st_mode):
            return root
        given = "--cache-dir" if cache_dir else f"the cache folder ({ENV} or the default)"
        where = "is a file" if p == root else f"is inside {p}, which is a file"
        raise GraftError(f"{given} {root} {where}: give a folder for graft's cache")


def namespace_dir(root, namespace: dict, fmt: int) -> Path:
    """`<root>/<arch>-<key>`: the key hashes everything that changes a cached row."""
    canonical = json.dumps({"format": fmt, **namespace}, sort_keys=True)
    key = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(namespace.get("arch", "features")))
    return Path(root).expanduser() / f"{slug}-{key}"


def mark(folder, kind: str) -> None:
    """Write `folder`'s marker if it has none: graft made this folder (for `graft cache prune`)."""
    marker = Path(folder) / MARKER
    if marker.is_file():
        return
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with open(marker, "x", encoding="utf-8") as f:
            json.dump({"made_by": "graft", "kind": kind}, f)
    except OSError:  # written by a concurrent run; or a read-only cache, where nothing new is stored
        pass


def marked(folder, kind: str) -> bool:
    """Does `folder` carry graft's marker for `kind`? (A regular file, not a link, with the tag.)"""
    try:
        marker = Path(folder) / MARKER
        if not stat.S_ISREG(os.lstat(marker).st_mode):
            return False
        tag = json.loads(marker.read_text(encoding="utf-8"))
        return isinstance(tag, dict) and tag.get("made_by") == "graft" and tag.get("kind") == kind
    except (OSError, ValueError):
        return False


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
