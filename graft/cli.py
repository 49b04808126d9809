"""`graft` on the command line: each sub-command is one call of the Python API (graft.api).

Errors the user can fix (GraftError) print one line and exit with status 2, no traceback;
warnings (skipped files) print one line each; progress bars go to stderr and `--quiet` hides them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

EPILOG = """examples:
  graft train PHOTOS --out runs/cats        train on PHOTOS/<class>/* (or PHOTOS/train + PHOTOS/val)
  graft predict runs/cats some.jpg          top-3 classes with probabilities
  graft evaluate runs/cats PHOTOS/val       accuracy, per-class figures, confusion matrix
  graft demo                                the whole pipeline on a small built-in photo set
  graft augment list                        augmentation presets and their knobs
  graft augment preview PHOTOS -o grid.png  see what each augmentation op does
  graft check PHOTOS                        find broken, duplicate, leaked, mislabelled photos
  graft report runs/cats --photos PHOTOS    RUN/report.html: curves, confusion, worst photos
  graft calibrate runs/cats PHOTOS          fit the "unknown" threshold for predict --reject auto
  graft predict runs/cats DIR --csv out.csv --reject auto
  graft export runs/cats --format onnx      ONNX / TorchScript with the same probabilities
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="graft",
        description="Turn a folder of photos into an image classifier by transfer learning: a "
        "pretrained network with a new softmax, trained on features cached on disk.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from . import __version__

    p.add_argument("--version", action="version", version=f"graft {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    t = sub.add_parser("train", help="train a classifier on a folder of photos",
                       description="Train a classifier on PHOTOS: PHOTOS/<class>/* (a validation "
                       "split is drawn by content hash) or PHOTOS/train/<class>/* + PHOTOS/val/<class>/*.")
    t.add_argument("photos", metavar="PHOTOS", help="folder of class sub-folders")
    t.add_argument("--out", "-o", required=True, metavar="RUN", help="run folder to write (model, metrics)")
    _backbone_args(t)
    t.add_argument("--strategy", default="auto", choices=["auto", "head", "partial", "full"],
                   help="head: frozen backbone + new softmax on cached features; partial: also train the "
                   "last --train-stages stages; full: train everything; auto (default): choose from the "
                   "data (see README)")
    t.add_argument("--train-stages", type=int, default=2, metavar="N",
                   help="partial: how many of the backbone's last stages train (default 2)")
    t.add_argument("--new-hidden", metavar="H[,H2]", default="",
                   help="partial: replace the last N stages by new hidden layers of these sizes (with dropout)")
    t.add_argument("--from-scratch", action="store_true",
                   help="full: random initialisation instead of the pretrained weights (for comparison)")
    t.add_argument("--resume", action="store_true", help="continue a killed or interrupted fine-tuning run in RUN")
    t.add_argument("--val-split", type=float, default=0.2, metavar="F",
                   help="share of each class held out for validation when PHOTOS has no val/ (default 0.2)")
    t.add_argument("--cache-dir", metavar="DIR", help="feature cache (default: $GRAFT_CACHE_DIR or ~/.cache/graft)")
    t.add_argument("--epochs", type=int, default=None, help="maximum epochs (default: head 100, fine-tuning 15)")
    t.add_argument("--lr", type=float, default=None,
                   help="AdamW learning rate of the new top (default 1e-3; pretrained layers get 1/10)")
    t.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay (default 1e-2)")
    t.add_argument("--label-smoothing", type=float, default=0.1, help="(default 0.1)")
    t.add_argument("--patience", type=int, default=None,
                   help="stop after this many epochs without a lower validation loss; 0 = never "
                   "(default: head 15, fine-tuning 5)")
    t.add_argument("--batch-size", type=int, default=32, help="(default 32)")
    t.add_argument("--seed", type=int, default=0, help="random seed; same seed, same model (default 0)")
    t.add_argument("--aug-views", type=int, default=0, metavar="K",
                   help="head strategy: also cache the features of K augmented draws of every training "
                   "image and sample among them each epoch (default 0: no augmentation)")
    _augment_args(t)
    t.add_argument("--aug-device", default="workers", choices=["workers", "cpu", "cuda"],
                   help="fine-tuning: where flips and colour ops run: in the loader workers (default), or "
                   "batched per sample on the trainer's device")
    _loader_args(t)
    _output_args(t)

    pr = sub.add_parser("predict", help="classify images with a trained run",
                        description="Print the top-k classes of each image (folders are searched).")
    pr.add_argument("run", metavar="RUN", help="run folder written by graft train")
    pr.add_argument("images", metavar="IMAGE", nargs="+", help="image files or folders")
    pr.add_argument("--topk", "-k", type=int, default=3, help="classes to show per image (default 3)")
    pr.add_argument("--weights", metavar="FILE", help="backbone weights file, if not where training found it")
    _loader_args(pr)
    _output_args(pr)

    ev = sub.add_parser("evaluate", help="accuracy of a run on labelled photos",
                        description="Accuracy, per-class precision/recall and the confusion matrix of "
                        "RUN on PHOTOS/<class>/* (the run's classes).")
    ev.add_argument("run", metavar="RUN")
    ev.add_argument("photos", metavar="PHOTOS", help="folder of class sub-folders (e.g. PHOTOS/val)")
    ev.add_argument("--cache-dir", metavar="DIR", help="feature cache to reuse (default as for train)")
    ev.add_argument("--weights", metavar="FILE", help="backbone weights file, if not where training found it")
    _loader_args(ev)
    _output_args(ev)

    a = sub.add_parser("augment", help="see and tune data augmentation",
                       description="List the augmentation presets, or preview what a setting does.")
    asub = a.add_subparsers(dest="augment_command", metavar="ACTION", required=True)
    asub.add_parser("list", help="every preset's settings, and what each knob means")
    pv = asub.add_parser("preview", help="write a picture of photos under random draws, one row per op")
    pv.add_argument("photos", metavar="PHOTOS", help="photo folder (a few photos are picked)")
    pv.add_argument("--out", "-o", required=True, metavar="PNG", help="picture to write")
    _augment_args(pv)
    pv.add_argument("--photos", dest="n_photos", type=int, default=3, help="photos to show (default 3)")
    pv.add_argument("--draws", type=int, default=6, help="random draws per row (default 6)")
    pv.add_argument("--size", type=int, default=224, help="crop size (default 224, the default backbone's)")
    pv.add_argument("--seed", type=int, default=0)

    from . import cache_admin as _cache_admin, calibrate as _calibrate, check as _check, export as _export
    from . import report as _report

    _check.add_cli(sub)
    _calibrate.add_predict_args(pr)
    _export.add_cli(sub)
    _calibrate.add_cli(sub)
    _report.add_cli(sub)
    _cache_admin.add_cli(sub)
    __import__("graft.serve_cli").serve_cli.add_parser(sub)  # i12-deploy: temporary, see graft/serve_cli.py

    d = sub.add_parser("demo", help="train and evaluate on a small photo set that ships with graft's dependencies",
                       description="Builds a demo set from scikit-image's bundled photos (train crops and "
                       "held-out val crops of 5 photos), trains on the default backbone and evaluates.")
    d.add_argument("--data", metavar="DIR", default=None, help="where to write the demo photos (default: in the cache)")
    d.add_argument("--out", "-o", metavar="RUN", default="runs/demo", help="run folder (default runs/demo)")
    d.add_argument("--cache-dir", metavar="DIR")
    _loader_args(d)
    _output_args(d)
    return p


def _backbone_args(p):
    p.add_argument("--backbone", "-b", default="default", metavar="SPEC",
                   help="default (EfficientNet-Lite0, ImageNet, ships with graft), timm:<model> or tv:<model>")
    p.add_argument("--weights", metavar="FILE", help="local weights file for the backbone (.safetensors or .pth)")


def _augment_args(p):
    p.add_argument("--augment", "--preset", dest="augment", default=None, metavar="PRESET",
                   help="augmentation preset: none, light, standard, heavy (default: standard when fine-tuning, "
                   "light for --aug-views); see `graft augment list`")
    p.add_argument("--aug", metavar="KNOBS|FILE", default=None,
                   help="override knobs, e.g. flip=0.5,rotate=15,crop_scale=0.35-1, or a .json/.toml file")


def _loader_args(p):
    p.add_argument("--workers", default="auto", metavar="N|auto", help="image decoding processes (default auto)")


def _output_args(p):
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or summary")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging()
    from .errors import GraftError

    try:
        return COMMANDS[args.command](args)
    except GraftError as e:
        print(f"graft: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("graft: interrupted", file=sys.stderr)
        return 130


def _setup_logging():
    log = logging.getLogger("graft")
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("graft: %(levelname)s: %(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO)
        log.propagate = False


def _workers(args):
    if args.workers == "auto":
        return None
    try:
        n = int(args.workers)
        if n < 0:
            raise ValueError
        return n
    except ValueError:
        from .errors import GraftError

        raise GraftError(f"--workers must be 'auto' or a number >= 0, got {args.workers!r}") from None


def _hidden(text: str) -> tuple:
    from .errors import GraftError

    try:
        sizes = tuple(int(h) for h in text.split(",") if h.strip())
    except ValueError:
        raise GraftError(f"--new-hidden takes sizes like 512 or 512,256, got {text!r}") from None
    if any(h <= 0 for h in sizes):
        raise GraftError(f"--new-hidden sizes must be positive, got {text!r}")
    return sizes


def cmd_train(args) -> int:
    from .api import train

    from .distributed import context

    result = train(args.photos, args.out, backbone=args.backbone, weights=args.weights,
                   strategy=args.strategy, val_split=args.val_split, cache_dir=args.cache_dir,
                   epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                   label_smoothing=args.label_smoothing, patience=args.patience,
                   batch_size=args.batch_size, seed=args.seed, workers=_workers(args),
                   augment=args.augment, aug=args.aug, aug_views=args.aug_views,
                   train_stages=args.train_stages, new_hidden=_hidden(args.new_hidden),
                   from_scratch=args.from_scratch, resume=args.resume, aug_device=args.aug_device,
                   progress=not args.quiet and not args.json)
    if not context().is_main:  # under torchrun only rank 0 reports
        return 0
    if args.json:
        print(json.dumps(result.metrics))
    elif not args.quiet:
        print(train_summary(result.metrics, result.run_dir))
    return 0


def train_summary(m: dict, run_dir) -> str:
    t = m["timings"]
    c = m["cache"]
    correct = round(m["val_accuracy"] * m["n_val"]) if m["n_val"] else 0
    rows = [
        ("val accuracy", f"{m['val_accuracy']:.3f}  ({correct}/{m['n_val']})"),
        ("images", f"{m['n_train']} train, {m['n_val']} val, {len(m['classes'])} classes"),
        ("backbone", f"{m['backbone']['spec']}  ({m['backbone']['arch']})"),
        ("strategy", f"{m['strategy']}: {m['strategy_reason']}"),
        ("features", f"{c['misses']} computed, {c['hits']} from cache  ({t['extract_s']:.2f} s)"),
        ("training", f"best epoch {m['best_epoch']} of {m['epochs_run']}  ({t['train_s']:.2f} s"
                     + (f", {100 * t['data_wait_s'] / max(1e-9, t['data_wait_s'] + t['step_s']):.0f}% waiting for data"
                        if t.get("step_s") else "") + ")"),
        *([("boundary cache", "frozen stages ran once; epochs ran only the trainable stages")]
          if m.get("finetune", {}).get("boundary_cache") else []),
        ("skipped", f"{len(m['skipped'])} file(s)" + ("  (see warnings above)" if m["skipped"] else "")),
        ("total", f"{t['total_s']:.2f} s"),
        ("model", str(Path(run_dir) / "model.json")),
    ]
    return "\n".join([_table(rows), "", per_class_table(m["per_class"])])


def per_class_table(per_class: dict) -> str:
    width = max(5, *(len(c) for c in per_class))
    lines = [f"{'class':<{width}}  precision  recall  support"]
    for name, v in per_class.items():
        lines.append(f"{name:<{width}}  {v['precision']:>9.3f}  {v['recall']:>6.3f}  {v['support']:>7d}")
    return "\n".join(lines)


def _table(rows) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def cmd_predict(args) -> int:
    if args.reject != "none" or args.csv:
        from .calibrate import cmd_predict_reject

        return cmd_predict_reject(args)
    from .api import predict

    results = predict(args.run, args.images, topk=args.topk, weights=args.weights, workers=_workers(args))
    if args.json:
        print(json.dumps(results))
        return 0
    for r in results:
        if "error" in r:
            print(f"{r['path']}: error: {r['error']}")
        else:
            top = ", ".join(f"{p['class']} {p['probability']:.3f}" for p in r["predictions"])
            print(f"{r['path']}: {top}")
    return 0 if any("predictions" in r for r in results) else 1


def cmd_evaluate(args) -> int:
    from .api import evaluate
    from .evaluate import format_confusion

    m = evaluate(args.run, args.photos, cache_dir=args.cache_dir, weights=args.weights,
                 workers=_workers(args), progress=not args.quiet and not args.json)
    if args.json:
        print(json.dumps(m))
    else:
        print(f"accuracy {m['accuracy']:.3f} on {m['n']} images\n")
        print(per_class_table(m["per_class"]) + "\n")
        print(format_confusion(m["confusion"], m["classes"]))
    return 0


def cmd_augment(args) -> int:
    from .augment import preset_table

    if args.augment_command == "list":
        print(preset_table())
        return 0
    from .api import augment_preview

    out = augment_preview(args.photos, args.out, preset=args.augment or "standard", aug=args.aug, n_photos=args.n_photos,
                          n_draws=args.draws, size=args.size, seed=args.seed)
    print(f"wrote {out}")
    return 0


def cmd_demo(args) -> int:
    from .api import evaluate, train
    from .cache import default_cache_dir
    from .demo import make_demo_photos

    data = Path(args.data) if args.data else (Path(args.cache_dir) if args.cache_dir else default_cache_dir()) / "demo-photos"
    quiet = args.quiet or args.json
    if not quiet:
        print(f"demo photos: {make_demo_photos(data)} (crops of scikit-image's bundled photos; "
              f"train and val crops come from different parts of each photo)")
    else:
        make_demo_photos(data)
    result = train(data, args.out, cache_dir=args.cache_dir, workers=_workers(args), progress=not quiet)
    m = evaluate(args.out, data / "val", cache_dir=args.cache_dir, workers=_workers(args))
    if args.json:
        print(json.dumps({"train": result.metrics, "evaluate": m}))
    elif not args.quiet:
        from .evaluate import format_confusion

        print(train_summary(result.metrics, result.run_dir))
        print("\n" + format_confusion(m["confusion"], m["classes"]))
        print(f"\ntry: graft predict {args.out} {data / 'val' / 'cat' / 'cat-00.jpg'}")
    return 0


def cmd_check(args) -> int:
    from .check import cmd_check as run

    return run(args)


def cmd_export(args) -> int:
    from .export import cmd_export as run

    return run(args)


def cmd_calibrate(args) -> int:
    from .calibrate import cmd_calibrate as run

    return run(args)


def cmd_report(args) -> int:
    from .report import cmd_report as run

    return run(args)


def cmd_cache(args) -> int:
    from .cache_admin import cmd_cache as run

    return run(args)


COMMANDS = {"train": cmd_train, "predict": cmd_predict, "evaluate": cmd_evaluate, "demo": cmd_demo,
            "augment": cmd_augment, "export": cmd_export, "calibrate": cmd_calibrate, "check": cmd_check,
            "report": cmd_report, "cache": cmd_cache, "serve": lambda args: args.handler(args)}

if __name__ == "__main__":
    sys.exit(main())
