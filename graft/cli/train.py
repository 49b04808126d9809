"""`graft train PHOTOS --out RUN`: graft.train as a command, and its summary table."""

from __future__ import annotations

import json
from pathlib import Path

from graft.run.files import MODEL_JSON, REPORT_HTML
from graft.cli._args import format_bytes, output_args, per_class_table, setting_args, settings_given, table

HELP = "train a classifier on a folder of photos"  # `graft --help`'s line


def add_parser(subparsers) -> None:
    """PHOTOS, --out and the output switches, then an option for every TrainConfig setting (its help,
    default, type and choices are the field's: graft/recipe/config.py)."""
    t = subparsers.add_parser("train", help=HELP,
                              description="Train a classifier on PHOTOS: PHOTOS/<class>/* (a validation "
                              "split is drawn by content hash), PHOTOS/train/<class>/* + PHOTOS/val/<class>/*, "
                              "or a label file labels.csv / labels.jsonl with columns path,label[,split] "
                              "(paths relative to the file; split: train, val or test).")
    t.add_argument("photos", metavar="PHOTOS", help="folder of class sub-folders, or a .csv/.jsonl label file")
    t.add_argument("--out", "-o", required=True, metavar="RUN", help="run folder to write (model, metrics)")
    setting_args(t)
    output_args(t)
    t.set_defaults(main=main)


def main(args) -> int:
    settings = settings_given(args)  # a bad --workers or --budget is said before anything loads
    from graft.finetune.distributed import context, shutdown
    from graft.recipe import train

    result = train(args.photos, args.out, **settings, progress=not args.quiet and not args.json)
    dist = context()
    if dist.enabled:  # leave the process group before the rank exits (graft._util.exit: how it exits)
        shutdown()
    if not dist.is_main:  # under torchrun only rank 0 reports
        return 0
    if args.json:
        print(json.dumps(result.metrics))
    elif not args.quiet:
        print(train_summary(result.metrics, result.run_dir))
    return 0


def train_summary(m: dict, run_dir) -> str:
    from graft.report.page import epochs_words

    run_dir = Path(run_dir)
    t = m["timings"]
    decoded = m["cache"].get("decoded")
    c = m["cache"]
    val = m["val_accuracy"]
    correct = round(val * m["n_val"]) if m["n_val"] and val is not None else 0
    cv = m.get("cv_accuracy") or {}
    head = m.get("head") or {}
    rows = [
        ("val accuracy", (f"{val:.3f}  ({correct}/{m['n_val']}, validation photos predicted once, never chosen on)"
                          if val is not None else f"none ({m.get('val_note', 'no held-out photos')})")),
        *([("cv accuracy", f"{cv['mean']:.3f} +- {cv['std']:.3f}  ({head.get('folds')}-fold on the training photos: "
                           f"what chose the head)")] if cv.get("mean") is not None else []),
        *([("head", f"{head['solver']}" + (f", L2 {head['strength']:.3g}" if head.get("strength") is not None else "")
                    + (f", {head['epochs']} epochs" if head.get("epochs") else "") + f"; {head.get('balance')}")]
          if head.get("solver") else []),
        *([("views", _views_line(m["views"]))] if (m.get("views") or {}).get("asked") not in (None, 0) else []),
        ("images", f"{m['n_train']} train, {m['n_val']} val, {len(m['classes'])} classes"),
        ("backbone", f"{m['backbone']['spec']}  ({m['backbone']['arch']})"
                     + (f"; {m['backbone_weighed']['why']}" if m.get("backbone_weighed") else "")),
        ("strategy", f"{m['strategy']}: {m['strategy_reason']}"),
        ("features", f"{c['misses']} computed, {c['hits']} from cache  ({t['extract_s']:.2f} s"
                     + "".join(f"; {e}" for e in c.get("engines", [])) + ")"),
        ("training", f"{epochs_words(m)}  ({t['train_s']:.2f} s"
                     + (f", {100 * t['data_wait_s'] / max(1e-9, t['data_wait_s'] + t['step_s']):.0f}% waiting for data"
                        if t.get("step_s") else "") + ")"),
        *([("boundary cache", "frozen stages ran once; epochs ran only the trainable stages")]
          if m.get("finetune", {}).get("boundary_cache") else []),
        ("skipped", f"{len(m['skipped'])} file(s)" + ("  (see warnings above)" if m["skipped"] else "")),
        ("total", f"{t['total_s']:.2f} s"),
        *_probe_comparison(m),
        ("model", str(run_dir / MODEL_JSON) + _trained_on(m)),
        *([("predict", f"{run_dir / m['export']['file']}: graft predict and serve run it on onnxruntime, "
                       f"without torch")] if m.get("export") else []),
        *([("report", str(run_dir / REPORT_HTML))] if (run_dir / REPORT_HTML).is_file() else []),
        *([("log", ", ".join(str(run_dir / name) for name in m["log"].values()))] if m.get("log") else []),
        *([("decoded photos", f"{format_bytes(decoded['bytes'])} of this data set kept in {decoded['dir']} "
                              f"({format_bytes(decoded['folder_bytes'])} in all) so later epochs and runs skip decoding; "
                              f"`graft cache prune` frees it")] if decoded else []),
    ]
    return "\n".join([table(rows), "", per_class_table(m["per_class"])])


def _trained_on(m: dict) -> str:
    """Which photos the written model learned from, when it is not simply the training photos."""
    on = m.get("trained_on") or {}
    if on.get("val") and not on.get("final"):
        return (f"  (fitted again on all {on['photos']} photos once the validation figure was taken: "
                f"the figure is the {on['train']}-photo model's)")
    return ""


def _views_line(v: dict) -> str:
    """What the head's augmented views were: asked for, or weighed by --aug-views auto."""
    if "used" in v and not v.get("k"):  # dropped on the share: the rest's views were never computed
        return (f"not used: {v['reason'].removeprefix('auto: ')} (--aug-views auto)")
    if "used" in v:
        share = (f"; first won on a share of {v['share']}: cv {v['share_cv_with']:.3f} with, "
                 f"{v['share_cv_without']:.3f} without" if v.get("share") else "")
        return (f"{v['k']} augmented views {'used' if v['used'] else 'not used'}: cv {v['cv_with']:.3f} with, "
                f"{v['cv_without']:.3f} without{share} (--aug-views auto)")
    if v.get("k"):
        return f"{v['k']} augmented views of each training photo"
    return f"none: {v.get('reason')}"


def _probe_comparison(m: dict) -> list[tuple[str, str]]:
    """A fine-tune that scored below the linear probe it started from says so."""
    probe, acc = m.get("probe_val_accuracy"), m.get("val_accuracy")
    if m.get("strategy") == "head" or probe is None or acc is None or not acc < probe:
        return []
    return [("note", f"the frozen head was better: {probe:.3f} vs {acc:.3f} (graft train --strategy head "
                     "keeps it)")]
