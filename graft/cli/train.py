"""`graft train PHOTOS --out RUN`: graft.train as a command, and its summary table."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import GraftError
from ._args import augment_args, backbone_args, loader_args, output_args, per_class_table, table, workers

HELP = "train a classifier on a folder of photos"  # `graft --help`'s line


def add_parser(subparsers) -> None:
    # here, not at the top: the defaults' modules import torch, which only training needs
    from ..finetune import FinetuneConfig
    from ..head import HeadConfig
    from ..strategy import STRATEGIES
    from ..train.config import TrainConfig

    d = TrainConfig  # every default shown here is TrainConfig's (or the trainer's, for None)
    t = subparsers.add_parser("train", help=HELP,
                              description="Train a classifier on PHOTOS: PHOTOS/<class>/* (a validation "
                              "split is drawn by content hash) or PHOTOS/train/<class>/* + PHOTOS/val/<class>/*.")
    t.add_argument("photos", metavar="PHOTOS", help="folder of class sub-folders")
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
    t.add_argument("--aug-views", type=int, default=d.aug_views, metavar="K",
                   help="head strategy: also cache the features of K augmented draws of every training "
                   "image and sample among them each epoch (default 0: no augmentation)")
    augment_args(t)
    t.add_argument("--aug-device", default=d.aug_device, choices=["workers", "cpu", "cuda"],
                   help="fine-tuning: where flips and colour ops run: in the loader workers (default), or "
                   "batched per sample on the trainer's device")
    loader_args(t)
    output_args(t)
    t.set_defaults(run=run)


def run(args) -> int:
    from ..train import train
    from ..distributed import context

    result = train(args.photos, args.out, backbone=args.backbone, weights=args.weights,
                   strategy=args.strategy, val_split=args.val_split, cache_dir=args.cache_dir,
                   epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                   label_smoothing=args.label_smoothing, patience=args.patience,
                   batch_size=args.batch_size, seed=args.seed, workers=workers(args.workers),
                   augment=args.augment, aug=args.aug, aug_views=args.aug_views,
                   train_stages=args.train_stages, new_hidden=hidden_sizes(args.new_hidden),
                   from_scratch=args.from_scratch, resume=args.resume, aug_device=args.aug_device,
                   progress=not args.quiet and not args.json)
    if not context().is_main:  # under torchrun only rank 0 reports
        return 0
    if args.json:
        print(json.dumps(result.metrics))
    elif not args.quiet:
        print(train_summary(result.metrics, result.run_dir))
    return 0


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
    return "\n".join([table(rows), "", per_class_table(m["per_class"])])
