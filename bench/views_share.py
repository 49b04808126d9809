"""Issue 21, item 2: --aug-views auto weighed on a share of the training photos, against weighing
on all of them. Does the verdict (views used or not) and the held-out accuracy change, and what
does the share save?

For each of --subsets random subsets (a --fraction of each class of PHOTOS/train, the same for both
sides), two `graft.train` runs over one feature cache, back to back:

  all    AUTO_VIEWS_SHARE = 1: views of every training photo, weighed on all (what graft did)
  share  the default AUTO_VIEWS_SHARE: weighed on a stratified share first; the rest's views are
         computed (and the verdict taken again on all) only if they win there

Printed per subset: the verdicts, the views' forward passes each side needed (counted as
if the cache were cold: photos x views weighed), and the held-out accuracy on PHOTOS/val (or
PHOTOS/test): never used to choose anything. The cache is warmed once first (every view of every
training photo), so the timings compare choosing, not extracting.

    .venv/bin/python bench/views_share.py [--data DIR] [--subsets 5] [--fraction 0.8]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HYMENOPTERA, emit  # noqa: E402


def subset(train: Path, into: Path, fraction: float, seed: int) -> None:
    rng = random.Random(seed)
    for cls in sorted(p for p in train.iterdir() if p.is_dir()):
        files = sorted(p for p in cls.iterdir() if p.is_file())
        (into / "train" / cls.name).mkdir(parents=True)
        for f in rng.sample(files, max(1, round(fraction * len(files)))):
            (into / "train" / cls.name / f.name).symlink_to(f.resolve())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(HYMENOPTERA), help="a folder with train/ and val/ (or test/)")
    ap.add_argument("--subsets", type=int, default=5)
    ap.add_argument("--fraction", type=float, default=0.8)
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args()
    data = Path(args.data)
    held = data / "val" if (data / "val").is_dir() else data / "test"
    if not (data / "train").is_dir() or not held.is_dir():
        print(json.dumps({"skipped": True, "reason": f"{data} has no train/ and val/ or test/"}))
        return
    import graft
    from graft.recipe import config

    # the share against all photos, wherever views are weighed at all: the floor of the clean head's
    # misses (config.MIN_MISSES_TO_WEIGH, which skips views on an easy set such as ants/bees) is off here
    config.MIN_MISSES_TO_WEIGH = 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="graft-views-share-") as tmp:
        cache = args.cache_dir or str(Path(tmp) / "cache")
        for i in range(args.subsets):
            photos = Path(tmp) / f"subset{i}"
            subset(data / "train", photos, args.fraction, seed=i)
            (photos / "val").symlink_to(held.resolve())
            row = {"subset": i}
            for side, share in (("all", 1.0), ("share", config.AUTO_VIEWS_SHARE)):
                config.AUTO_VIEWS_SHARE = share
                t0 = time.perf_counter()
                m = graft.train(photos, Path(tmp) / f"run{i}-{side}", cache_dir=cache, progress=False,
                                report=False, strategy="head").metrics
                v = m["views"] or {}
                if v.get("k"):  # every training photo's views were computed
                    forwards = m["n_train"] * v["k"]
                else:  # dropped on the share (or never weighed)
                    forwards = v.get("share", 0) * config.AUTO_VIEWS
                row[side] = {"used": v.get("used"), "cv_with": v.get("cv_with"), "cv_without": v.get("cv_without"),
                             "view_forwards": forwards, "val_accuracy": m["val_accuracy"],
                             "seconds": round(time.perf_counter() - t0, 2)}
            config.AUTO_VIEWS_SHARE = 0.25
            rows.append(row)
            a, s = row["all"], row["share"]
            print(f"subset {i}: all used={a['used']} val {a['val_accuracy']:.4f} ({a['view_forwards']} view passes) | "
                  f"share used={s['used']} val {s['val_accuracy']:.4f} ({s['view_forwards']} view passes)", file=sys.stderr)
    same = sum(r["all"]["used"] == r["share"]["used"] for r in rows)
    emit({"data": str(data), "subsets": len(rows), "same_verdict": same,
          "val_accuracy_all": [r["all"]["val_accuracy"] for r in rows],
          "val_accuracy_share": [r["share"]["val_accuracy"] for r in rows],
          "view_forwards_all": sum(r["all"]["view_forwards"] for r in rows),
          "view_forwards_share": sum(r["share"]["view_forwards"] for r in rows),
          "ratio_forwards": round(sum(r["all"]["view_forwards"] for r in rows) /
                                  max(1, sum(r["share"]["view_forwards"] for r in rows)), 2),
          "rows": rows, "load_avg": round(os.getloadavg()[0], 2)})


if __name__ == "__main__":
    main()
