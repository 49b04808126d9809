"""Augmentation with a frozen backbone: head accuracy on hymenoptera with clean features only
(K = 1 view, no augmentation) versus K = 10 cached augmented views per training image, one run.

Each configuration runs twice: cold (views extracted) and warm (every view from the cache).

    .venv/bin/python bench/aug_views.py [--views 10] [--preset light]
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
    ap.add_argument("--views", type=int, default=10)
    ap.add_argument("--preset", default=None, help="default: graft's default for views (light)")
    ap.add_argument("--aug", default=None)
    args = ap.parse_args()
    root = need_hymenoptera()
    with tempfile.TemporaryDirectory() as tmp:
        kw = dict(cache_dir=Path(tmp) / "cache", strategy="head", progress=False)
        t = time.perf_counter()
        plain = graft.train(root, Path(tmp) / "k1", aug_views=0, **kw)  # clean features only
        time_1 = time.perf_counter() - t
        t = time.perf_counter()
        views = graft.train(root, Path(tmp) / "kv", aug_views=args.views, augment=args.preset, aug=args.aug, **kw)
        time_v = time.perf_counter() - t
        t = time.perf_counter()
        again = graft.train(root, Path(tmp) / "kv2", aug_views=args.views, augment=args.preset, aug=args.aug, **kw)
        time_v_warm = time.perf_counter() - t
    m = views.metrics
    share = m["timings"]["data_wait_s"] / max(1e-9, m["timings"]["data_wait_s"] + m["timings"]["step_s"])
    print(f"K=1  (clean features)      val acc {plain.val_accuracy:.4f}   {time_1:7.2f} s (cold cache)")
    preset = views.metrics["augmentation"]["preset"]
    print(f"K={args.views} ({preset} views)  val acc {views.val_accuracy:.4f}   {time_v:7.2f} s "
          f"(views extracted; backbone waited for data {100 * share:.1f}% of its time)")
    print(f"K={args.views} again              val acc {again.val_accuracy:.4f}   {time_v_warm:7.2f} s "
          f"(cache misses {again.metrics['cache']['misses']})")
    emit({"acc_k1": round(plain.val_accuracy, 4), f"acc_k{args.views}": round(views.val_accuracy, 4),
          "time_k1_s": round(time_1, 2), f"time_k{args.views}_s": round(time_v, 2),
          f"time_k{args.views}_warm_s": round(time_v_warm, 2), "warm_misses": again.metrics["cache"]["misses"],
          "data_wait_share": round(share, 4), "preset": preset})


if __name__ == "__main__":
    main()
