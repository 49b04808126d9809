"""`graft train PHOTOS --out RUN`: graft.train as a command, and its summary table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from graft.errors import GraftError
from graft.cli._args import augment_args, backbone_args, human, loader_args, output_args, per_class_table, table, workers

HELP = "train a classifier on a folder of photos"  # `graft --help`'s line


def views_count(text: str):
    """--aug-views: "auto" or a whole number (argparse says which, in one line, otherwise)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a whole number, got {text!r}") from None


def add_parser(subparsers) -> None:
    # here, not at the top: the defaults' modules import torch, which only training needs
    from graft.finetune.loop import FinetuneConfig
    from graft.heads.softmax import HeadConfig
    from graft.recipe.strategy import STRATEGIES
    from graft.recipe.config import TrainConfig

    d = TrainConfig  # every default shown here is TrainConfig's (or the trainer's, for None)
    t = subparsers.add_parser("train", help=HELP,
                              description="Train a classifier on PHOTOS: PHOTOS/<class>/* (a validation "
                              "split is drawn by content hash), PHOTOS/train/<class>/* + PHOTOS/val/<class>/*, "
                              "or a label file labels.csv / labels.jsonl with columns path,label[,split] "
                              "(paths relative to the file; split: train, val or test).")
    t.add_argument("photos", metavar="PHOTOS", help="folder of class sub-folders, or a .csv/.jsonl label file")
    t.add_argument("--out", "-o", required=True, metavar="RUN", help="run folder to write (model, metrics)")
    backbone_args(t)
    t.add_argument("--strategy", default=d.strategy, choices=list(STRATEGIES),
                   help="head: frozen backbone + new softmax on cached features; partial: also train the "
                   "last --train-stages stages; full: train everything; auto (default): choose from the "
                   "data (see README)")
    t.add_argument("--train-stages", type=int, default=d.train_stages, metavar="N",
                   help=f"partial: how many of the backbone's last stages train (default {d.train_stages})")
    t.add_argument("--new-hidden", metavar="H[,H2]", default="",
                   help="partial: replace the last N stages by new hidden layers of these sizes (with dropout)")
    t.add_argument("--from-scratch", action="store_true",
                   help="full: random initialisation instead of the pretrained weights (for comparison)")
    t.add_argument("--resume", action="store_true", help="continue a killed or interrupted fine-tuning run in RUN")
    t.add_argument("--val-split", type=float, default=d.val_split, metavar="F",
                   help=f"share of each class held out for validation when PHOTOS has no val/ (default {d.val_split})")
    t.add_argument("--cache-dir", metavar="DIR", help="feature cache (default: $GRAFT_CACHE_DIR or ~/.cache/graft)")
    t.add_argument("--epochs", type=int, default=d.epochs,
                   help=f"maximum epochs (default: head {HeadConfig.epochs}, fine-tuning {FinetuneConfig.epochs})")
    t.add_argument("--lr", type=float, default=d.lr,
                   help=f"AdamW learning rate of the new top (default {FinetuneConfig.lr:g}; pretrained layers get "
                   f"1/{1 / FinetuneConfig.backbone_lr_mult:g})")
    t.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help=f"AdamW weight decay (default {d.weight_decay:g})")
    t.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help=f"(default {d.label_smoothing:g})")
    t.add_argument("--patience", type=int, default=d.patience,
                   help="stop after this many epochs without a lower validation loss; 0 = never "
                   f"(default: head {HeadConfig.patience}, fine-tuning {FinetuneConfig.patience})")
    t.add_argument("--batch-size", type=int, default=d.batch_size, help=f"(default {d.batch_size})")
    t.add_argument("--seed", type=int, default=d.seed, help=f"random seed; same seed, same model (default {d.seed})")
    t.add_argument("--aug-views", type=views_count, default=d.aug_views, metavar="K|auto",
                   help="head strategy: also cache the features of K augmented draws of every training "
                   "image and train on them too; auto (default): 4 views, kept only if they cross-validate "
                   "better on the training photos (weighed with 20+ photos in every class and up to 1,000 "
                   "training photos); 0: none")
    t.add_argument("--balance", default=d.balance, choices=["auto", "none"],
                   help="auto (default): weight the loss so each class counts equally when the largest class "
                   "has more than 3x the photos of the smallest; none: never")
    t.add_argument("--solver", default=d.solver, choices=["auto", "lbfgs", "adamw"],
                   help="the head's solver: lbfgs (logistic regression, L2 strength by cross-validation), adamw "
                   "(epochs by cross-validation), or auto (default): whichever cross-validates better on the "
                   "training photos")
    t.add_argument("--budget", type=duration, default=d.budget, metavar="SECONDS|Nm",
                   help="--backbone auto: seconds (or e.g. 2m) of feature extraction the candidates lite0, lite1, "
                   f"lite2 may cost, estimated from lite0's measured rate (default {d.budget:g} s); "
                   "concatenations of those extracted are weighed too, at no extraction cost")
    t.add_argument("--final", action="store_true",
                   help="a model for deployment: after choosing everything on the training photos' "
                   "cross-validation, also train on the validation photos (no held-out accuracy then)")
    augment_args(t)
    t.add_argument("--aug-device", default=d.aug_device, choices=["workers", "cpu", "cuda"],
                   help="fine-tuning: where flips and colour ops run: in the loader workers (default), or "
                   "batched per sample on the consumer's CPU (cpu) or the trainer's GPU (cuda)")
    t.add_argument("--log", default="csv", metavar="csv|tensorboard",
                   help="per-epoch log of the head and fine-tuning epochs: RUN/log.csv is always written; "
                   "tensorboard also writes RUN/tensorboard/ (needs pip install 'graft[tensorboard]')")
    loader_args(t)
    output_args(t)
    t.set_defaults(run=run)


def run(args) -> int:
    from graft.recipe import train
    from graft.finetune.distributed import context

    result = train(args.photos, args.out, backbone=args.backbone, weights=args.weights,
                   strategy=args.strategy, val_split=args.val_split, cache_dir=args.cache_dir,
                   epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                   label_smoothing=args.label_smoothing, patience=args.patience,
                   batch_size=args.batch_size, seed=args.seed, workers=workers(args.workers),
                   augment=args.augment, aug=args.aug, aug_views=args.aug_views,
                   train_stages=args.train_stages, new_hidden=hidden_sizes(args.new_hidden),
                   from_scratch=args.from_scratch, resume=args.resume, aug_device=args.aug_device,
                   balance=args.balance, solver=args.solver, final=args.final, budget=args.budget,
                   log=args.log, progress=not args.quiet and not args.json)
    if not context().is_main:  # under torchrun only rank 0 reports
        return 0
    if args.json:
        print(json.dumps(result.metrics))
    elif not args.quiet:
        print(train_summary(result.metrics, result.run_dir))
    return 0


def duration(text: str) -> float:
    """--budget: 90, 90s, 2m, 1h."""
    mult = {"s": 1, "m": 60, "h": 3600}.get(text[-1:].lower(), None)
    try:
        value = float(text[:-1] if mult else text) * (mult or 1)
    except ValueError:
        raise GraftError(f"--budget takes seconds like 90, 90s or 2m, got {text!r}") from None
    if value <= 0:
        raise GraftError(f"--budget must be positive, got {text!r}")
    return value


def hidden_sizes(text: str) -> tuple:
    """--new-hidden: "512" or "512,256"."""
    try:
        sizes = tuple(int(h) for h in text.split(",") if h.strip())
    except ValueError:
        raise GraftError(f"--new-hidden takes sizes like 512 or 512,256, got {text!r}") from None
    if any(h <= 0 for h in sizes):
        raise GraftError(f"--new-hidden sizes must be positive, got {text!r}")
    return sizes


def train_summary(m: dict, run_dir) -> str:
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
        *_probe_comparison(m),
        ("model", str(run_dir / "model.json")),
        *([("report", str(run_dir / "report.html"))] if (run_dir / "report.html").is_file() else []),
        *([("log", ", ".join(str(run_dir / name) for name in m["log"].values()))] if m.get("log") else []),
        *([("decoded photos", f"{human(decoded['bytes'])} of this data set kept in {decoded['dir']} "
                              f"({human(decoded['folder_bytes'])} in all) so later epochs and runs skip decoding; "
                              f"`graft cache prune` frees it")] if decoded else []),
    ]
    return "\n".join([table(rows), "", per_class_table(m["per_class"])])


def _views_line(v: dict) -> str:
    """What the head's augmented views were: asked for, or weighed by --aug-views auto."""
    if "used" in v:
        return (f"{v['k']} augmented views {'used' if v['used'] else 'not used'}: cv {v['cv_with']:.3f} with, "
                f"{v['cv_without']:.3f} without (--aug-views auto)")
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
