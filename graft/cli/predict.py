"""`graft predict RUN IMAGE...`: top-k classes per image; `--reject` answers `unknown` for photos
of no class (graft calibrate's thresholds, or a probability), `--csv` writes one row per image."""

from __future__ import annotations

import json

from graft.cli._args import (cache_dir_arg, engine_arg, output_args, run_arg, setting_args, tta_arg, weights_arg,
                             workers_given)

HELP = "classify images with a trained run"  # `graft --help`'s line


def add_parser(subparsers) -> None:
    pr = subparsers.add_parser("predict", help=HELP,
                               description="Print the top-k classes of each image (folders are searched).")
    run_arg(pr)
    pr.add_argument("images", metavar="IMAGE", nargs="+", help="image files or folders")
    pr.add_argument("--topk", "-k", type=int, default=3, help="classes to show per image (default 3)")
    weights_arg(pr)
    cache_dir_arg(pr, "feature cache: photos whose features are cached (e.g. training photos) skip the "
                  "backbone (default: none; graft train's is $GRAFT_CACHE_DIR or ~/.cache/graft)")
    engine_arg(pr)
    tta_arg(pr)
    setting_args(pr, ["workers"])
    output_args(pr)
    pr.add_argument("--reject", default="none", metavar="auto|none|P",
                    help="answer `unknown` for photos of no class: auto (the thresholds of `graft "
                    "calibrate`), none (default), or a probability P (top probability below P)")
    pr.add_argument("--calibrate-on", metavar="PHOTOS", default=None,
                    help="with --reject auto and no calibration yet: calibrate on these photos first")
    pr.add_argument("--csv", metavar="FILE", default=None, help="write one CSV row per image to FILE")
    pr.set_defaults(main=main)


def main(args) -> int:
    from graft.use.inference import parse_reject, predict, predict_to_csv, predict_with_reject

    n_workers = workers_given(args)
    if args.topk < 1:
        from graft.errors import GraftError

        raise GraftError(f"--topk must be a whole number >= 1, got {args.topk}")
    common = {"topk": args.topk, "weights": args.weights, "workers": n_workers, "cache_dir": args.cache_dir,
              "engine": args.engine, "tta": args.tta}
    if args.csv:
        out = predict_to_csv(args.run_dir, args.images, args.csv, reject=args.reject, photos=args.calibrate_on,
                             progress=not args.quiet, **common)
        if not args.quiet:
            from graft._util.output import one_line

            say_calibrated(args)
            print(f"wrote {one_line(str(out))}")
        return 0
    if parse_reject(args.reject) is None:
        results = predict(args.run_dir, args.images, **common)
    else:
        results = predict_with_reject(args.run_dir, args.images, reject=args.reject, photos=args.calibrate_on,
                                      progress=not args.quiet and not args.json, **common)
    if not args.quiet:
        say_calibrated(args)
    if args.json:
        print(json.dumps(results))
        return 0
    for r in results:
        print(format_result(r))
    return 0 if any("predictions" in r for r in results) else 1


def say_calibrated(args) -> None:
    """With --reject auto the probabilities shown are temperature-scaled: one line on stderr says
    so, since the same photo then shows another number than a plain `graft predict`."""
    from graft.use.inference import parse_reject

    if parse_reject(args.reject) != "auto":
        return
    import sys
    from pathlib import Path

    from graft._util.atomic import read_json
    from graft.use.calibrate import CALIBRATION_JSON

    path = Path(args.run_dir) / CALIBRATION_JSON
    cal = read_json(path, missing=f"{path} not found")  # the answers used it: load_calibration checked it
    t = float(cal["temperature"])
    from graft._util.output import one_line

    print(f"graft: probabilities are calibrated: logits divided by temperature T={t:.3f} ({one_line(str(path))}), "
          f"so they differ from `graft predict` without --reject auto", file=sys.stderr)


def format_result(r: dict) -> str:
    """One line for the terminal (control characters in names escaped: one file, one line)."""
    from graft.use.reject import UNKNOWN
    from graft._util.output import one_line

    path = one_line(str(r["path"]))
    if "error" in r:
        return f"{path}: error: {one_line(str(r['error']))}"
    top = ", ".join(f"{p['class']} {p['probability']:.3f}" for p in r["predictions"])
    if r.get("class") == UNKNOWN:
        return f"{path}: unknown [{r.get('reason', '')}]  top: {top}"
    return f"{path}: {top}"
