"""What graft's cache holds, and pruning it: `graft cache` / `graft cache prune`.

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

import argparse
import contextlib
import fcntl
import json
import os
import re
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import GraftError

# Files prune may delete, by area: feature shards, decoded photos, fitted PCA colour axes.
PRUNABLE = {"features": "*.safetensors", "decoded": "*.npy", "pca": "*.json"}


def touch(path) -> None:
    """Record a use of a cache file: its access time becomes now (mtime, which the decoded-photo
    cache checks for replacement, is kept). Best effort: a read-only cache stays as it is."""
    try:
        st = os.stat(path)
        os.utime(path, ns=(time.time_ns(), st.st_mtime_ns))
    except OSError:
        pass


def last_used(st: os.stat_result) -> float:
    return max(st.st_atime, st.st_mtime)


@dataclass
class Area:
    """One part of the cache: a feature namespace, the decoded photos, the PCA fits, the demo."""

    path: Path
    kind: str  # "features", "decoded", "pca", "demo", "other"
    what: str  # for features: backbone, weights digest, activation
    files: int = 0
    bytes: int = 0
    last_used: float = 0.0
    entries: list = field(default_factory=list, repr=False)  # (last_used, bytes, path) of prunable files
    stale: list = field(default_factory=list, repr=False)  # the same for temp files (.tmp-*)

    def as_dict(self) -> dict:
        return {"path": str(self.path), "kind": self.kind, "what": self.what, "files": self.files,
                "bytes": self.bytes, "last_used": self.last_used}


NAMESPACE = re.compile(r".+-[0-9a-f]{16}")  # FeatureCache's folder names: <arch slug>-<key>
STALE_TMP = 86400  # seconds: a temp file untouched this long belongs to a killed run


def usage(root=None) -> list[Area]:
    """Every area of the cache under `root` (default: graft's cache), largest first.

    Only graft's own folders hold prunable files: feature namespaces (`<arch>-<key>` with a
    `namespace.json`), `decoded` and `pca`. Anything else found there, and symlinked folders,
    are listed as "other" and never pruned.
    """
    from .cache import default_cache_dir

    root = Path(root).expanduser() if root else default_cache_dir()
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
            if f.name.startswith(".tmp-"):  # a write in progress, or left by a killed run
                area.stale.append((last_used(st), st.st_size, f))
            elif f.match(pattern) and not f.name.startswith("."):
                area.entries.append((last_used(st), st.st_size, f))
        areas.append(area)
    return sorted(areas, key=lambda a: -a.bytes)


def _describe(sub: Path) -> tuple[str, str]:
    if sub.name == "decoded":
        return "decoded", "photos decoded once, cropped from in later epochs"
    if sub.name == "pca":
        return "pca", "PCA colour axes fitted on training sets"
    if sub.name == "demo-photos":
        return "demo", "graft demo's photos"
    ns = sub / "namespace.json"
    if NAMESPACE.fullmatch(sub.name) and ns.is_file():
        try:
            meta = json.loads(ns.read_text())
            parts = [str(meta.get("arch", "?"))]
            if meta.get("weights_digest"):
                parts.append(f"weights {str(meta['weights_digest'])[:12]}")
            if meta.get("point"):
                parts.append(str(meta["point"]))
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
        f = stack.enter_context(open(ns_dir / ".extract.lock", "a+b"))
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # no lock to take (a read-only cache): no run can be writing to it either
        return True
    stack.callback(fcntl.flock, f.fileno(), fcntl.LOCK_UN)
    return True


# -- parsing what people type ----------------------------------------------------------------------

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_AGES = {"s": 1, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

def parse_size(text: str) -> int:
    """'500M', '2G', '1.5g', '1024' (bytes) -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])i?)?b?\s*", str(text).lower())
    if not m:
        raise GraftError(f"a size looks like 500M or 2G, got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2) or ""])


def parse_age(text: str) -> float:
    """'30d', '12h', '2w', '90min', '45s' -> seconds ('m' is refused: minutes or months?)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|min|h|d|w)\s*", str(text).lower())
    if not m:
        raise GraftError(f"an age looks like 30d, 12h, 2w or 90min, got {text!r}")
    return float(m.group(1)) * _AGES[m.group(2)]


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if round(n, 1) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


# -- the CLI -----------------------------------------------------------------------------------------

def add_cli(subparsers):
    """Register `graft cache [info]` and `graft cache prune`; dispatch with cmd_cache."""
    p = subparsers.add_parser("cache", help="see what graft's cache holds, and prune it",
                              description="Everything in the cache can be recomputed: pruning costs "
                              "time on the next run, never results.")

    def common(q, suppress: bool):
        # On `cache` and on each action, so both `graft cache --json prune` and `graft cache prune
        # --json` work; an action's copies stay unset unless given (not reset to the defaults).
        kw = {"default": argparse.SUPPRESS} if suppress else {}
        q.add_argument("--cache-dir", metavar="DIR", help="the cache (default $GRAFT_CACHE_DIR or ~/.cache/graft)", **kw)
        q.add_argument("--json", action="store_true", help="print the result as JSON on stdout", **kw)

    common(p, False)
    sub = p.add_subparsers(dest="cache_command", metavar="ACTION")
    common(sub.add_parser("info", help="size and last use of each part of the cache (the default)"), True)
    pr = sub.add_parser("prune", help="delete the least recently used cache files")
    common(pr, True)
    pr.add_argument("--older-than", metavar="AGE", help="delete files unused for AGE (e.g. 30d, 12h, 2w, 90min)")
    pr.add_argument("--max-size", metavar="SIZE", help="then delete the oldest until shards, decoded photos and "
                    "PCA fits take at most SIZE (e.g. 2G)")
    pr.add_argument("--dry-run", action="store_true", help="list what would go, delete nothing")
    p.set_defaults(handler=cmd_cache)
    return p


def cmd_cache(args) -> int:
    from .cache import default_cache_dir

    root = (Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()).absolute()
    if not root.is_dir():
        raise GraftError(f"no cache at {root}")
    if getattr(args, "cache_command", None) == "prune":
        r = prune(root, older_than=parse_age(args.older_than) if args.older_than else None,
                  max_bytes=parse_size(args.max_size) if args.max_size else None, dry_run=args.dry_run)
        if args.json:
            print(json.dumps(r.as_dict()))
            return 1 if r.failed else 0
        if r.dry_run:
            for path in r.paths[:20]:
                print(f"would delete {path}")
            if len(r.paths) > 20:
                print(f"... and {len(r.paths) - 20} more")
            print(f"would delete {r.deleted_files} file(s), {human(r.deleted_bytes)}, "
                  f"leaving {human(r.kept_bytes)} ({human(r.prunable_bytes)} prunable)")
        else:
            print(f"deleted {r.deleted_files} file(s), {human(r.deleted_bytes)}; the cache now holds "
                  f"{human(r.kept_bytes)} ({human(r.prunable_bytes)} prunable)")
        for path in r.skipped_busy:
            print(f"skipped {path}: a run is extracting into it")
        if r.unmet:
            print(f"could not get below {args.max_size}: the rest is in namespaces in use")
        for line in r.failed[:10]:
            print(f"could not delete {line}", file=sys.stderr)
        return 1 if r.failed else 0
    areas = usage(root)
    if args.json:
        print(json.dumps({"root": str(root), "bytes": sum(a.bytes for a in areas),
                          "areas": [a.as_dict() for a in areas]}))
        return 0
    if not areas:
        print(f"{root}: empty")
        return 0
    now = time.time()
    print(f"{root}: {human(sum(a.bytes for a in areas))}")
    for a in areas:
        age = _age(now - a.last_used) if a.last_used else "-"
        files = f"{a.files} file" + ("" if a.files == 1 else "s")
        print(f"  {human(a.bytes):>9}  {files:>11}  used {age:>9}  {a.path.name}  ({a.kind}: {a.what})")
    return 0


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return "just now"
