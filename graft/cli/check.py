"""The `graft check` sub-command: arguments, the report on stdout, exit status 1 on errors.
"""

from __future__ import annotations

import json
from pathlib import Path

from graft.run.files import CHECK_JSON, METRICS_JSON, REPORT_HTML

HELP = "scan a photo folder for problems before training"  # `graft --help`'s line


def add_parser(subparsers) -> None:
    """Register `graft check PHOTOS [--json] [--quick] [--cache-dir DIR] [-b SPEC] [--val-split F]`."""
    from graft.data import VAL_SPLIT

    c = subparsers.add_parser(
        "check", help=HELP,
        description="Scan PHOTOS (as graft train reads it) for unusable files, train/val leakage, "
        "duplicates, placeholders, photos of neither class (listed first), likely mislabelled photos and more. "
        "Exit status 1 if there are errors.")
    c.add_argument("photos", metavar="PHOTOS", help="folder of class sub-folders (or train/ + val/), or a .csv/.jsonl label file")
    c.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    c.add_argument("--quick", action="store_true",
                   help="skip the deep checks (placeholder images, photos of neither class, mislabelled photos: "
                   "needs backbone features)")
    c.add_argument("--cache-dir", metavar="DIR", help="feature cache (default: $GRAFT_CACHE_DIR or ~/.cache/graft)")
    c.add_argument("--backbone", "-b", default="default", metavar="SPEC",
                   help="backbone for the features of the deep check (default: default)")
    c.add_argument("--val-split", type=float, default=VAL_SPLIT, metavar="F",
                   help=f"as for graft train, to know which photos will be in val (default {VAL_SPLIT})")
    c.add_argument("--apply-to", metavar="RUN", default=None,
                   help="also keep the findings in the run folder RUN trained on these photos (RUN/check.json) "
                   "and rebuild RUN/report.html, which then shows them")
    c.set_defaults(main=main)


def main(args) -> int:
    from graft.check import check_photos, format_report

    if args.apply_to:
        from graft.run.store import read_record

        record = read_record(args.apply_to)  # before the check: a wrong RUN is said at once
    report = check_photos(args.photos, deep=not args.quick, cache_dir=args.cache_dir, backbone=args.backbone,
                          val_split=args.val_split, progress=not args.json and not getattr(args, "quiet", False))
    if args.apply_to:
        saved = apply_to(report, args.apply_to, record, args.photos)
    print(json.dumps(report, indent=None) if args.json else format_report(report))
    if args.apply_to and not args.json:
        print(f"saved these findings to {saved}; {Path(args.apply_to) / REPORT_HTML} shows them")
    return 1 if report["summary"]["errors"] else 0


def apply_to(report: dict, run_dir, record, photos) -> Path:
    """Keep `report` in RUN/check.json (paths absolute, so the report's links work from anywhere)
    and rebuild RUN/report.html. The run (`record`: its graft.run.record.RunRecord) must have the
    classes the photos have."""
    from graft._util.atomic import write_json
    from graft.errors import GraftError
    from graft.report import write_report

    if report["classes"] != list(record.classes):
        raise GraftError(f"{run_dir} was trained on classes {', '.join(record.classes)}, but {photos} has "
                         f"{', '.join(report['classes']) or 'none'}: give the photos it was trained on")
    kept = {**report, "root": str(Path(report["root"]).absolute()),
            "findings": [{**d, "path": str(Path(d["path"]).absolute())} for d in report["findings"]]}
    out = Path(run_dir) / CHECK_JSON
    write_json(out, kept)
    if (Path(run_dir) / METRICS_JSON).is_file():
        write_report(run_dir, photos=photos)
    return out
