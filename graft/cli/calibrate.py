"""`graft calibrate RUN PHOTOS`: fit the thresholds `graft predict --reject auto` uses."""

from __future__ import annotations

import json
from pathlib import Path

from graft.cli._args import cache_dir_arg, output_args, run_arg, setting_args, weights_arg, workers_given
from graft.run.files import REPORT_HTML

HELP = "fit confidence calibration and the 'unknown' thresholds of a run"  # `graft --help`'s line


def add_parser(subparsers) -> None:
    from graft.use.calibrate import KEEP, NOVELTY_QUANTILE  # built only for `graft calibrate` (numpy)

    p = subparsers.add_parser(
        "calibrate", help=HELP,
        description="Fit temperature scaling, a novelty threshold and a confidence threshold on photos of "
        "PHOTOS (the photos RUN was trained on) that the model was not fitted on: out-of-fold predictions of "
        "the training photos (the run's head refitted without each of 5 folds; for a fine-tuned run, the "
        "training photos it held out for early stopping). The thresholds keep at least --keep of those "
        "photos; the validation photos are then scored once, as new photos, for the figure it reports. "
        "`graft predict RUN ... --reject auto` then answers `unknown` for photos of neither class.")
    run_arg(p)
    p.add_argument("photos", metavar="PHOTOS", help="the photo folder (or label file) RUN was trained on")
    p.add_argument("--keep", type=float, default=KEEP, metavar="K",
                   help=f"share of the photos of RUN's classes to keep, i.e. not answer `unknown` (default "
                   f"{KEEP:g}): held on new photos like the training ones nine times in ten (an exact binomial bound "
                   "on the out-of-fold predictions); "
                   "lower refuses more (e.g. 0.9: up to 10%% refused to reach --target-accuracy), 1 refuses "
                   "none of them. The trade-off table in calibration.json and the report shows each choice")
    p.add_argument("--target-accuracy", type=float, default=0.99, metavar="A",
                   help="accuracy wanted on the photos not refused, as far as --keep allows (default 0.99)")
    p.add_argument("--novelty-quantile", type=float, default=None, metavar="Q",
                   help=f"share of the training photos the novelty check must accept (default {NOVELTY_QUANTILE:g}, "
                   "or more when --keep leaves less than 2%% to refuse)")
    p.add_argument("--no-novelty", action="store_true", help="refuse on low confidence only")
    cache_dir_arg(p)
    weights_arg(p)
    setting_args(p, ["workers"])
    output_args(p, json_help="print the calibration as JSON on stdout")
    p.set_defaults(main=main)


def main(args) -> int:
    from graft.use.calibrate import calibrate_run

    cal = calibrate_run(args.run_dir, args.photos, args.target_accuracy, keep=args.keep, novelty=not args.no_novelty,
                        novelty_quantile=args.novelty_quantile, cache_dir=args.cache_dir, weights=args.weights,
                        workers=workers_given(args), progress=not args.quiet and not args.json)
    refresh_export_of(args.run_dir)
    report = Path(args.run_dir) / REPORT_HTML
    if report.is_file():  # the report training wrote: now with the calibration section
        from graft.report import write_report

        write_report(args.run_dir, photos=args.photos, cache_dir=args.cache_dir, weights=args.weights,
                     workers=workers_given(args))
    if args.json:
        print(json.dumps(cal))
    elif not args.quiet:
        print(calibration_summary(cal, args.run_dir))
        if report.is_file():
            print(f"  report           {report} (now with the calibration)")
    return 0


def calibration_summary(cal: dict, run_dir) -> str:
    from graft.use.calibrate import CALIBRATION_JSON
    from graft.report.page import ordinal, unknown_reasons

    fit = cal["fit"]
    where = {"training": "training photos, out of fold", "inner": "training photos fine-tuning held out",
             "validation": "validation photos"}[fit["photos"]]
    lines = [
        f"  fitted on        {fit['how']}",
        f"  temperature      {cal['temperature']:.3f}  (NLL {fit['nll']['before']:.3f} -> {fit['nll']['after']:.3f})",
        f"  threshold        {cal['threshold']:.4f}  (top probability below it -> unknown)" if cal["threshold"] > 0
        else "  threshold        none: no confidence threshold needed",
    ]
    if cal.get("novelty"):
        n = cal["novelty"]
        nearest = "nearest" if n["k"] == 1 else f"{ordinal(n['k'])} nearest"
        lines.append(f"  novelty          cosine distance to the {nearest} of {n['n_reference']} "
                     f"training photos above {n['threshold']:.4f} -> unknown")
    reach = "reached" if cal["target_reached"] else "not reached"
    asked = (f"asked: at least {cal['keep']:g} of new photos, {100 * fit['assurance']:.0f}% of the time: at least "
             f"{fit['keep_with_margin']:.3f} of these" if fit.get("assurance") else f"asked: at least {cal['keep']:g}")
    lines.append(f"  kept             {fit['kept']:.3f} of the {where} ({asked}), "
                 f"{fit['accuracy_kept']:.3f} of them right (target {cal['target_accuracy']:g}, {reach})")
    u, v = cal.get("val_unknown"), cal.get("val_kept")
    if u and v:
        lines.append(f"  validation       {u['n_val'] - u['either']} of {u['n_val']} validation photos kept "
                     f"({v['kept']:.3f}), {v['accuracy_kept']:.3f} of them right; unknown: {u['either']} "
                     f"({unknown_reasons(u)})" + (f"; chance range {v['kept_range'][0]:.3f}-{v['kept_range'][1]:.3f} "
                                                  f"on {u['n_val']} photos" if v.get("kept_range") else ""))
    elif cal.get("final"):
        lines.append("  validation       none held out (the model was trained on them: --final, or refitted on "
                     "every photo of a split graft drew): no independent figure")
    lines.append(f"  saved            {Path(run_dir) / CALIBRATION_JSON}  (its keep_table: other --keep choices)")
    return "\n".join(lines)


def refresh_export_of(run_dir) -> None:
    """The run's ONNX export (graft train writes one) made again with the new calibration, so
    `graft predict --reject auto` stays fast (graft.use.compose.refresh_export); a failure leaves
    the calibration standing and predict on torch, said in one line."""
    import logging

    from graft.use.compose import refresh_export

    try:
        refresh_export(run_dir)
    except Exception as e:
        logging.getLogger("graft").warning("could not refresh %s's ONNX export with the calibration (%s): "
                                           "graft predict runs on torch until `graft export %s`", run_dir,
                                           str(e).splitlines()[0] if str(e) else type(e).__name__, run_dir)
