"""`graft calibrate RUN PHOTOS`: fit the thresholds `graft predict --reject auto` uses."""

from __future__ import annotations

import json
from pathlib import Path

from ._args import cache_dir_arg, loader_args, output_args, run_arg, weights_arg, workers

HELP = "fit confidence calibration and the 'unknown' thresholds of a run"  # `graft --help`'s line


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate", help=HELP,
        description="Fit temperature scaling, a confidence threshold reaching --target-accuracy and a "
        "novelty threshold on the validation photos of PHOTOS (the photos RUN was trained on); "
        "`graft predict RUN ... --reject auto` then answers `unknown` for photos of neither class.")
    run_arg(p)
    p.add_argument("photos", metavar="PHOTOS", help="the photo folder (or label file) RUN was trained on")
    p.add_argument("--target-accuracy", type=float, default=0.99, metavar="A",
                   help="accuracy wanted on the photos not refused as unknown (default 0.99)")
    p.add_argument("--novelty-quantile", type=float, default=0.99, metavar="Q",
                   help="share of the training photos the novelty check must accept (default 0.99)")
    p.add_argument("--no-novelty", action="store_true", help="refuse on low confidence only")
    cache_dir_arg(p)
    weights_arg(p)
    loader_args(p)
    output_args(p, json_help="print the calibration as JSON on stdout")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..calibrate import calibrate_run

    cal = calibrate_run(args.run_dir, args.photos, args.target_accuracy, novelty=not args.no_novelty,
                        novelty_quantile=args.novelty_quantile, cache_dir=args.cache_dir, weights=args.weights,
                        workers=workers(args.workers), progress=not args.quiet and not args.json)
    report = Path(args.run_dir) / "report.html"
    if report.is_file():  # the report training wrote: now with the calibration section
        from ..report import write_report

        write_report(args.run_dir, photos=args.photos, cache_dir=args.cache_dir, weights=args.weights,
                     workers=workers(args.workers))
    if args.json:
        print(json.dumps(cal))
    elif not args.quiet:
        print(calibration_summary(cal, args.run_dir))
        if report.is_file():
            print(f"  report           {report} (now with the calibration)")
    return 0


def calibration_summary(cal: dict, run_dir) -> str:
    from ..calibrate import CALIBRATION_JSON
    from ..report.page import ordinal

    reach = "reached" if cal["target_reached"] else "NOT reached (best reachable)"
    lines = [
        f"  temperature      {cal['temperature']:.3f}  (validation NLL {cal['val_nll']['before']:.3f} -> "
        f"{cal['val_nll']['after']:.3f})",
        f"  threshold        {cal['threshold']:.4f}  (top probability below it -> unknown)" if cal["threshold"] > 0
        else "  threshold        none needed: the validation photos reach the target at every confidence",
        f"  at threshold     accuracy {cal['val_accuracy_at_threshold']:.3f} ({reach}: target "
        f"{cal['target_accuracy']:g}), coverage {cal['coverage_at_threshold']:.3f} of {cal['n_val']} val photos",
    ]
    if cal.get("novelty"):
        n = cal["novelty"]
        nearest = "nearest" if n["k"] == 1 else f"{ordinal(n['k'])} nearest"
        lines.append(f"  novelty          cosine distance to the {nearest} of {n['n_reference']} "
                     f"training photos above {n['threshold']:.4f} -> unknown")
    u = cal.get("val_unknown")
    if u:
        lines.append(f"  unknown          {u['either']} of {u['n_val']} validation photos would be answered unknown "
                     f"({u['confidence']} by confidence" + (f", {u['novelty']} by novelty)" if u["novelty"] is not None
                                                            else ")"))
    lines.append(f"  saved            {Path(run_dir) / CALIBRATION_JSON}")
    return "\n".join(lines)

