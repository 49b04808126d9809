"""`graft evaluate RUN PHOTOS`: accuracy, per-class figures and the confusion matrix."""

from __future__ import annotations

import json

from graft.cli._args import (cache_dir_arg, output_args, per_class_table, run_arg, setting_args, tta_arg, weights_arg,
                             workers_given)

HELP = "accuracy of a run on labelled photos"  # `graft --help`'s line


def add_parser(subparsers) -> None:
    ev = subparsers.add_parser("evaluate", help=HELP,
                               description="Accuracy, per-class precision/recall and the confusion matrix of "
                               "RUN on PHOTOS/<class>/* (the run's classes), or on a label file: its rows with split=test when "
                               "it has any, else every row.")
    run_arg(ev, help=None)
    ev.add_argument("photos", metavar="PHOTOS", help="folder of class sub-folders (e.g. PHOTOS/val), or a .csv/.jsonl label file")
    cache_dir_arg(ev)
    weights_arg(ev)
    tta_arg(ev)
    setting_args(ev, ["workers"])
    output_args(ev)
    ev.set_defaults(main=main)


def main(args) -> int:
    from graft.use.inference import evaluate

    m = evaluate(args.run_dir, args.photos, cache_dir=args.cache_dir, weights=args.weights,
                 workers=workers_given(args), progress=not args.quiet and not args.json, tta=args.tta)
    if args.json:
        print(json.dumps(m))
    else:
        tta = " (tta: centre crop + mirror)" if m["tta"] == "flip" else ""
        print(f"accuracy {m['accuracy']:.3f} on {m['n']} images{tta}\n")
        print(per_class_table(m["per_class"]) + "\n")
        print(format_confusion(m["confusion"], m["classes"]))
    return 0


def format_confusion(confusion, classes) -> str:
    width = max(6, *(len(c) for c in classes)) + 1
    lines = ["true \\ pred".ljust(width) + "".join(c[:width - 1].rjust(width) for c in classes)]
    for name, row in zip(classes, confusion):
        lines.append(name[:width - 1].ljust(width) + "".join(str(v).rjust(width) for v in row))
    return "\n".join(lines)
