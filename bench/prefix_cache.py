"""Partial fine-tuning of the last 2 stages with and without the boundary-activation cache.

Same data, seed and settings (no augmentation, so the frozen stages' output is the same every
epoch); one run times each epoch both ways and prints the ratio of the median epoch times and the
validation accuracies.

    .venv/bin/python bench/prefix_cache.py [--epochs 5]
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, need_hymenoptera  # noqa: E402

import graft  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args()
    root = need_hymenoptera()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        kw = dict(cache_dir=cache, strategy="partial", train_stages=2, augment="none", epochs=args.epochs,
                  patience=0, seed=0, progress=False)
        graft.train(root, Path(tmp) / "fill", **kw)  # boundary activations computed once, not timed below
        for name, use in (("with_cache", True), ("without_cache", False)):
            t = time.perf_counter()
            r = graft.train(root, Path(tmp) / name, boundary_cache=use, **kw)
            wall = time.perf_counter() - t
            epochs = r.metrics["history"]["epoch_s"]
            out[name] = {"median_epoch_s": round(statistics.median(epochs), 3), "wall_s": round(wall, 2),
                         "val_accuracy": round(r.val_accuracy, 4), "boundary_cache": r.metrics["finetune"]["boundary_cache"]}
            print(f"{name:<14} median epoch {statistics.median(epochs):7.3f} s   val acc {r.val_accuracy:.4f}   "
                  f"run {wall:6.1f} s", file=sys.stderr)
    ratio = out["without_cache"]["median_epoch_s"] / out["with_cache"]["median_epoch_s"]
    print(f"epoch time ratio (without / with boundary cache): {ratio:.1f}x")
    emit({"ratio": round(ratio, 2), **out})


if __name__ == "__main__":
    main()
