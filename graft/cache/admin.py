"""What graft's cache holds, and pruning it (`graft cache` / `graft cache prune`, graft.cli.cache).

The cache only grows by itself: every backbone, weights file, boundary layer and augmentation
config gets its own namespace of feature shards, and decoded photos take up to 4 GB per data set.
Everything in it can be recomputed, so pruning never loses work, only time. Each shard or decoded
photo records its last use in its access time (set explicitly when a process opens it, so
`noatime`/`relatime` mounts do not matter); `prune` deletes the least recently used files first.

A namespace that a run is extracting into is skipped (its extraction lock is held); a run reading
a shard that vanished recomputes its entries. Only graft's own folders are pruned: never
namespace descriptions (`namespace.json`), locks, the demo photos, folders graft did not make,
or what a link points to.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from graft.errors import GraftError
from graft.cache.layout import DECODED, DEMO, DIGESTS, ENGINES, EXTRACT_LOCK, HEADS, NAMESPACE_DIR, NAMESPACE_FILE, OWN_FILES, OWN_TEMP, PCA, PREVIEWS, cache_root, marked

# Files prune may delete, by area: feature shards, decoded photos, fitted PCA colour axes, photo
# digest indexes (the next scan reads those photos again) and ONNX exports (exported again).
PRUNABLE = {"features": "*.safetensors", "decoded": "*.npy", "pca": "*.json", "digests": "*.idx",
            "engines": "*.onnx"}
# graft's names for its files in every area (layout.OWN_FILES: decoded/, pca/): feature shards
# (graft.cache.features), digest indexes (graft.data.digests.index_path), ONNX engines
# (graft.backbones.engine.onnx_path); and the temp files graft._util.atomic writes them through.
# Only files so named are pruned: a user's weights file or model in the cache folder stays.
_TEMP = r"\.tmp-[a-z0-9_]{8}"
OWN_NAMES = {**OWN_FILES, "features": re.compile(r"[0-9a-f]+-\d+-[0-9a-f]{8}\.safetensors"),
             DIGESTS: re.compile(r"[0-9a-f]{24}\.idx"), ENGINES: re.compile(r"[^/]+-[0-9a-f]{16}\.onnx")}
OWN_TEMPS = {**OWN_TEMP, "features": re.compile(_TEMP + r"\.safetensors"), DIGESTS: re.compile(_TEMP + r"\.idx"),
             ENGINES: re.compile(_TEMP + r"\.onnx")}
# The heads chosen (graft.heads.search) and the report's augmentation previews (graft.report.gallery),
# each named by the digest of its inputs: made again when pruned.
PRUNABLE.update({HEADS: "*.safetensors", PREVIEWS: "*.png"})
OWN_NAMES.update({HEADS: re.compile(r"[0-9a-f]{32}\.safetensors"), PREVIEWS: re.compile(r"[0-9a-f]{32}\.png")})
OWN_TEMPS.update({HEADS: re.compile(_TEMP + r"\.safetensors"), PREVIEWS: re.compile(_TEMP + r"\.png")})


def last_used(st: os.stat_result) -> float:
    return max(st.st_atime, st.st_mtime)


@dataclass
class Area:
    """One part of the cache: a feature namespace, the decoded photos, the PCA fits, the demo."""

    path: Path
    kind: str  # "features", "decoded", "pca", "digests", "engines", "heads", "previews", "demo", "other"
    what: str  # for features: backbone, weights digest, activation
    files: int = 0
    bytes: int = 0
    last_used: float = 0.0
    entries: list = field(default_factory=list, repr=False)  # (last_used, bytes, path) of prunable files
    stale: list = field(default_factory=list, repr=False)  # the same for temp files (.tmp-*)

    def as_dict(self) -> dict:
        return {"path": str(self.path), "kind": self.kind, "what": self.what, "files": self.files,
                "bytes": self.bytes, "last_used": self.last_used}


STALE_TMP = 86400  # seconds: a temp file untouched this long belongs to a killed run


def usage(root=None) -> list[Area]:
    """Every area of the cache under `root` (default: graft's cache), largest first.

    Only graft's own folders hold prunable files: feature namespaces (`<arch>-<key>` with a
    `namespace.json`), and `digests`, `engines`, `decoded` and `pca` when they carry graft's marker
    (layout.MARKER, written at creation) or, made before the marker, already hold a file named as
    graft names its own. In all of them only files with graft's names (OWN_NAMES) are prunable: a
    folder of the user's that happens to be called `pca` keeps its `r.json`, `engines` its
    `my_model.onnx`. Anything else found there, and symlinked folders, are listed as "other" and
    never pruned.
    """
    root = cache_root(root)
    if not root.is_dir():
        return []
    areas = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        kind, what = ("other", "a link, left alone") if sub.is_symlink() else _describe(sub)
        area = Area(sub, kind, what)
        pattern = PRUNABLE.get(kind)
        for f in ([] if sub.is_symlink() else sub.rglob("*")):
            try:
                st = f.lstat()
            except OSError:  # deleted meanwhile
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            area.files += 1
            area.bytes += st.st_size
            area.last_used = max(area.last_used, last_used(st))
            if pattern is None:
                continue
            rel = f.relative_to(sub).as_posix()
            if OWN_TEMPS[kind].fullmatch(rel):  # a write in progress, or left by a killed run
                area.stale.append((last_used(st), st.st_size, f))
            elif OWN_NAMES[kind].fullmatch(rel):  # graft's names only
                area.entries.append((last_used(st), st.st_size, f))
        if kind != "features" and not (marked(sub, kind) or area.entries):
            # neither graft's marker nor a single file named as graft names its own: not graft's
            area.kind, area.what, area.entries, area.stale = "other", "not graft's (no marker), left alone", [], []
        areas.append(area)
    return sorted(areas, key=lambda a: -a.bytes)


def folder_bytes(path) -> int:
    """Bytes of the regular files under one cache folder (not following links): what one area,
    such as the decoded photos, takes without walking the whole cache."""
    total = 0
    for f in Path(path).rglob("*"):
        try:
            st = f.lstat()
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            total += st.st_size
    return total


def _describe(sub: Path) -> tuple[str, str]:
    if sub.name == DECODED:
        return "decoded", "photos decoded once, cropped from in later epochs"
    if sub.name == PCA:
        return "pca", "PCA colour axes fitted on training sets"
    if sub.name == DIGESTS:
        return "digests", "photo digest indexes: a rescan reads only changed photos"
    if sub.name == ENGINES:
        return "engines", "backbones exported to ONNX for onnxruntime"
    if sub.name == HEADS:
        return HEADS, "heads chosen by cross-validation, reused by a rerun on the same features"
    if sub.name == PREVIEWS:
        return PREVIEWS, "the report's augmentation previews"
    if sub.name == DEMO:
        return "demo", "graft demo's photos"
    ns = sub / NAMESPACE_FILE
    if NAMESPACE_DIR.fullmatch(sub.name) and ns.is_file():
        try:
            namespace = json.loads(ns.read_text())  # what the cached features are of (features.FeatureCache)
            parts = [str(namespace.get("arch", "?"))]
            if namespace.get("weights_digest"):
                parts.append(f"weights {str(namespace['weights_digest'])[:12]}")
            if namespace.get("point"):
                parts.append(str(namespace["point"]))
            return "features", ", ".join(parts)
        except (OSError, ValueError, AttributeError):
            pass
    return "other", "not graft's, left alone"


@dataclass
class PruneResult:
    deleted_files: int
    deleted_bytes: int
    kept_bytes: int  # the whole cache after pruning
    prunable_bytes: int  # of which feature shards, decoded photos and PCA fits
    skipped_busy: list[str]  # namespaces a run is extracting into
    failed: list[str]  # files that could not be deleted ("path: reason")
    unmet: bool  # --max-size could not be reached (busy namespaces)
    dry_run: bool
    paths: list[str] = field(default_factory=list)  # what went (or would go, for a dry run)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def prune(root=None, *, older_than: float | None = None, max_bytes: int | None = None,
          dry_run: bool = False) -> PruneResult:
    """Delete cache files unused for `older_than` seconds, then the least recently used ones
    until feature shards, decoded photos and PCA fits take at most `max_bytes` bytes (what else
    the folder holds, such as the demo photos, is never pruned and not counted). At least one of
    the two must be given. Temp files left by killed runs (untouched for a day) always go.

    A namespace a run is extracting into is skipped, in a dry run too, so a dry run names
    exactly what a real one would delete.
    """
    if older_than is None and max_bytes is None:
        raise GraftError("prune needs --older-than AGE and/or --max-size SIZE")
    for name, value in (("older_than", older_than), ("max_bytes", max_bytes)):
        if value is not None and not (isinstance(value, (int, float)) and value >= 0):
            raise GraftError(f"{name} must be a number >= 0 (seconds or bytes; see parse_age / parse_size), "
                             f"got {value!r}")
    areas = usage(root)
    total = sum(a.bytes for a in areas)
    prunable = sum(size for a in areas for _, size, _ in a.entries)
    now = time.time()
    with contextlib.ExitStack() as locks:
        busy, candidates, stale = [], [], []
        for a in areas:
            if not (a.entries or a.stale):
                continue
            if a.kind == "features" and not _try_lock(locks, a.path):
                busy.append(str(a.path))
                continue
            candidates.extend(a.entries)
            stale.extend(e for e in a.stale if now - e[0] > STALE_TMP)
        candidates.sort(key=lambda e: e[0])  # least recently used first
        doomed, left = [(*e, True) for e in stale], prunable
        for used, size, path in candidates:
            too_old = older_than is not None and now - used > older_than
            too_big = max_bytes is not None and left > max_bytes
            if not (too_old or too_big):
                break  # oldest first: nothing after this one is older, and the size is met
            doomed.append((used, size, path, False))
            left -= size
        deleted, freed, freed_prunable, failed, paths = 0, 0, 0, [], []
        for _, size, path, is_tmp in doomed:
            if not dry_run:
                try:
                    path.unlink()
                except FileNotFoundError:  # gone meanwhile
                    continue
                except OSError as e:
                    failed.append(f"{path}: {e.strerror or e}")
                    continue
            deleted += 1
            freed += size
            freed_prunable += 0 if is_tmp else size
            paths.append(str(path))
    unmet = max_bytes is not None and prunable - freed_prunable > max_bytes
    return PruneResult(deleted, freed, total - freed, prunable - freed_prunable, busy, failed, unmet, dry_run, paths)


def _try_lock(stack: contextlib.ExitStack, ns_dir: Path) -> bool:
    """Take the namespace's extraction lock without waiting (held until prune ends)."""
    try:
        f = stack.enter_context(open(ns_dir / EXTRACT_LOCK, "a+b"))
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # no lock to take (a read-only cache): no run can be writing to it either
        return True
    stack.callback(fcntl.flock, f.fileno(), fcntl.LOCK_UN)
    return True


# -- sizes and ages as people write them (`--max-size 2G`, `--older-than 30d`) -----------------------

_AGES = {"s": 1, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """'30d', '12h', '2w', '90min', '45s' -> seconds ('m' is refused: minutes or months?)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|min|h|d|w)\s*", str(text).lower())
    if not m:
        raise GraftError(f"an age looks like 30d, 12h, 2w or 90min, got {text!r}")
    return float(m.group(1)) * _AGES[m.group(2)]
