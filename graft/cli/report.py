"""`graft report RUN [--photos PHOTOS] [--open]`: rebuild RUN/report.html and print its path."""

from __future__ import annotations

from graft.cli._args import run_arg, weights_arg

HELP = "write RUN/report.html: curves, confusion matrix, worst photos, timings"  # `graft --help`'s line


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help=HELP,
        description="Rebuild RUN/report.html, one self-contained page (pictures embedded) about a run. "
        "With --photos (the folder it was trained on) it also shows the augmentation preview, and "
        "the most confidently wrong validation photos of runs that did not store their predictions.")
    run_arg(p)
    p.add_argument("--photos", metavar="PHOTOS", default=None, help="the photo folder (or label file) the run was trained on")
    p.add_argument("--cache-dir", metavar="DIR", help="feature cache (default: the one the run used)")
    weights_arg(p)
    p.add_argument("--open", action="store_true", help="open the report in a web browser")
    p.set_defaults(main=main)


def main(args) -> int:
    from graft.report import write_report

    out = write_report(args.run_dir, photos=args.photos, cache_dir=args.cache_dir, weights=args.weights)
    print(out)
    if args.open:
        import sys
        import webbrowser

        try:
            opened = webbrowser.open(out.resolve().as_uri())
        except webbrowser.Error:
            opened = False
        if not opened:  # a server or container: say so rather than nothing
            print(f"graft: no web browser found to open it: open {out} yourself", file=sys.stderr)
    return 0
