"""The `graft check` sub-command: arguments, the report on stdout, exit status 1 on errors.
"""

from __future__ import annotations

import json

HELP = "scan a photo folder for problems before training"  # `graft --help`'s line


def add_parser(subparsers) -> None:
    """Register `graft check PHOTOS [--json] [--quick] [--cache-dir DIR] [-b SPEC] [--val-split F]`."""
    c = subparsers.add_parser(
        "check", help=HELP,
        description="Scan PHOTOS (as graft train reads it) for unusable files, train/val leakage, "
        "duplicates, placeholders, likely mislabelled photos and more. Exit status 1 if there are errors.")
    c.add_argument("photos", metavar="PHOTOS", help="folder of class sub-folders (or train/ + val/)")
    c.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    c.add_argument("--quick", action="store_true",
                   help="skip the deep checks (placeholder images, mislabelled photos: needs backbone features)")
    c.add_argument("--cache-dir", metavar="DIR", help="feature cache (default: $GRAFT_CACHE_DIR or ~/.cache/graft)")
    c.add_argument("--backbone", "-b", default="default", metavar="SPEC",
                   help="backbone for the features of the deep check (default: default)")
    c.add_argument("--val-split", type=float, default=0.2, metavar="F",
                   help="as for graft train, to know which photos will be in val (default 0.2)")
    c.set_defaults(run=run)


def run(args) -> int:
    from ..check import check_photos, format_report

    report = check_photos(args.photos, deep=not args.quick, cache_dir=args.cache_dir, backbone=args.backbone,
                          val_split=args.val_split, progress=not args.json and not getattr(args, "quiet", False))
    print(json.dumps(report, indent=None) if args.json else format_report(report))
    return 1 if report["summary"]["errors"] else 0
