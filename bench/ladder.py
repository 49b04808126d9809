"""The data-size ladder on hymenoptera: validation accuracy and wall time of every strategy.

head (frozen, cached features), partial with the last 1, 2, 3 stages training, full fine-tuning
from the pretrained weights, and full training from scratch: same seed, same epoch budget, same
augmentation for every fine-tuned variant. One table, and one JSON line.

    .venv/bin/python bench/ladder.py [--epochs 8] [--augment light]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, need_hymenoptera  # noqa: E402

import graft  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--augment", default="light")
    ap.add_argument("--only", default=None, help="comma-separated subset of variant names")
    args = ap.parse_args()
    root = need_hymenoptera()
    variants = {
        "head": dict(strategy="head"),
        "partial-1": dict(strategy="partial", train_stages=1),
        "partial-2": dict(strategy="partial", train_stages=2),
        "partial-3": dict(strategy="partial", train_stages=3),
        "full": dict(strategy="full"),
        "full-scratch": dict(strategy="full", from_scratch=True, lr=3e-3),
    }
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only.split(",")}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        graft.train(root, Path(tmp) / "warm", cache_dir=cache, strategy="head", progress=False)  # fill the cache
        for name, kw in variants.items():
            ft = kw["strategy"] != "head"
            t = time.perf_counter()
            r = graft.train(root, Path(tmp) / name, cache_dir=cache, seed=0, progress=False,
                            epochs=args.epochs if ft else None, patience=0 if ft else None,
                            augment=args.augment if ft or kw.get("aug_views") else None, **kw)
            wall = time.perf_counter() - t
            rows[name] = {"val_accuracy": round(r.val_accuracy, 4), "wall_s": round(wall, 1),
                          "best_epoch": r.metrics["best_epoch"]}
            timings = r.metrics.get("timings", {})
            if "data_wait_s" in timings:  # fine-tuning: the share of its time the trainer waited for data
                busy = timings["data_wait_s"] + timings["step_s"]
                rows[name]["data_wait_share"] = round(timings["data_wait_s"] / max(busy, 1e-9), 4)
            print(f"{name:<13} val acc {r.val_accuracy:.4f}   {wall:8.1f} s   best epoch {r.metrics['best_epoch']}",
                  file=sys.stderr)
    print(f"\n{'strategy':<13} {'val acc':>8} {'wall s':>8} {'data wait':>10}")
    for name, row in rows.items():
        wait = f"{100 * row['data_wait_share']:.1f}%" if "data_wait_share" in row else "-"
        print(f"{name:<13} {row['val_accuracy']:>8.4f} {row['wall_s']:>8.1f} {wait:>10}")
    emit({"epochs": args.epochs, "augment": args.augment, **rows})


if __name__ == "__main__":
    main()
