"""`graft cache [info]` (what the cache holds) and `graft cache prune` (graft.cache.admin)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from graft.errors import GraftError
from graft.cli._args import format_bytes

HELP = "see what graft's cache holds, and prune it"  # `graft --help`'s line


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("cache", help=HELP,
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
    pr.add_argument("--max-size", metavar="SIZE", help="then delete the oldest until shards, decoded photos, "
                    "PCA fits, digest indexes and ONNX exports take at most SIZE (e.g. 2G)")
    pr.add_argument("--dry-run", action="store_true", help="list what would go, delete nothing")
    p.set_defaults(main=main)


def main(args) -> int:
    from graft.cache import cache_root

    root = cache_root(args.cache_dir).absolute()
    if not root.is_dir():
        raise GraftError(f"no cache at {root}")
    if getattr(args, "cache_command", None) == "prune":
        return _prune(args, root)
    return _info(args, root)


def _prune(args, root) -> int:
    from graft._util.sizes import parse_size
    from graft.cache.admin import parse_age, prune

    r = prune(root, older_than=parse_age(args.older_than) if args.older_than else None,
              max_bytes=parse_size(args.max_size, "--max-size") if args.max_size else None, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(r.as_dict()))
        return 1 if r.failed else 0
    if r.dry_run:
        for path in r.paths[:20]:
            print(f"would delete {path}")
        if len(r.paths) > 20:
            print(f"... and {len(r.paths) - 20} more")
        print(f"would delete {r.deleted_files} file(s), {format_bytes(r.deleted_bytes)}, "
              f"leaving {format_bytes(r.kept_bytes)} ({format_bytes(r.prunable_bytes)} prunable)")
    else:
        print(f"deleted {r.deleted_files} file(s), {format_bytes(r.deleted_bytes)}; the cache now holds "
              f"{format_bytes(r.kept_bytes)} ({format_bytes(r.prunable_bytes)} prunable)")
    for path in r.skipped_busy:
        print(f"skipped {path}: a run is extracting into it")
    if r.unmet:
        print(f"could not get below {args.max_size}: the rest is in namespaces in use")
    for line in r.failed[:10]:
        print(f"could not delete {line}", file=sys.stderr)
    return 1 if r.failed else 0


def _info(args, root) -> int:
    from graft.cache.admin import usage

    areas = usage(root)
    if args.json:
        print(json.dumps({"root": str(root), "bytes": sum(a.bytes for a in areas),
                          "areas": [a.as_dict() for a in areas]}))
        return 0
    if not areas:
        print(f"{root}: empty")
        return 0
    now = time.time()
    print(f"{root}: {format_bytes(sum(a.bytes for a in areas))}")
    for a in areas:
        age = _age(now - a.last_used) if a.last_used else "-"
        files = f"{a.files} file" + ("" if a.files == 1 else "s")
        print(f"  {format_bytes(a.bytes):>9}  {files:>11}  used {age:>9}  {a.path.name}  ({a.kind}: {a.what})")
    return 0


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return "just now"
