"""A cold default run (issue 21): `graft train PHOTOS --out R`, nothing else asked, on a fresh
cache, for this tree and (--before DIR) another graft tree, interleaved round by round so that
both sides see the same machine. Per run: graft's own total (metrics.json timings.total_s), the
process's wall time, the feature and training seconds, the strategy and views verdicts, and the
held-out accuracy (scored once, after the run; nothing is chosen on it).

Sets: hymenoptera (the folder as given: train/ trains, its val/ is graft's validation and the
held-out figure), hymenoptera-train and trashnet (train/ only, one folder as a user gives it:
graft draws its own validation share and refits on all; val/ or test/ is scored once with
graft.evaluate).

    .venv/bin/python bench/cold_run.py [--set hymenoptera|hymenoptera-train|trashnet] [--before /tmp/graft-before] [--rounds 2] [--seeds 0,1,2]

--seeds: round r runs `--seed` seeds[r % len(seeds)] on both sides (how much the held-out figure
moves with the seed alone: the augmented views' draws, the folds); default: seed 0 every round.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HYMENOPTERA, emit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SETS = {"hymenoptera": (HYMENOPTERA, None), "hymenoptera-train": (HYMENOPTERA / "train", HYMENOPTERA / "val"),
        "trashnet": (HYMENOPTERA.parent / "trashnet" / "train",
                                                         HYMENOPTERA.parent / "trashnet" / "test")}
SCORE = "import graft, json, sys; print(json.dumps(graft.evaluate(sys.argv[1], sys.argv[2])))"


def one_run(tree: Path, photos: Path, held_out: Path | None, work: Path, seed: int = 0) -> dict:
    out, cache = work / "run", work / "cache"
    env = {**os.environ, "PYTHONPATH": str(tree), "GRAFT_CACHE_DIR": str(cache)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "graft", "train", str(photos), "--out", str(out), "--quiet", "--seed", str(seed)],
                          cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"graft train failed ({tree}):\n{proc.stderr[-3000:]}")
    m = json.loads((out / "metrics.json").read_text())
    t = m["timings"]
    row = {"seed": seed, "total_s": t["total_s"], "wall_s": round(wall, 2), "extract_s": t.get("extract_s"),
           "train_s": t.get("train_s"), "strategy": m.get("strategy"),
           "views_used": bool((m.get("views") or {}).get("used")), "val_accuracy": m.get("val_accuracy")}
    if held_out is not None:  # scored once, after the run chose everything
        scored = subprocess.run([sys.executable, "-c", SCORE, str(out), str(held_out)], env=env, cwd=work,
                                capture_output=True, text=True, check=True)
        s = json.loads(scored.stdout.strip().splitlines()[-1])
        row.update(held_out=round(s["accuracy"], 4), held_out_balanced=round(s["balanced_accuracy"], 4))
    else:
        row["held_out"] = m.get("val_accuracy")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=sorted(SETS), default="hymenoptera")
    ap.add_argument("--before", type=Path, help="another graft tree (its folder holding graft/) to compare with")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seeds", default="0", help="comma-separated seeds, one a round in turn")
    args = ap.parse_args()
    photos, held_out = SETS[args.set]
    if not photos.is_dir():
        print(f"skipped: {photos} is not there")
        emit({"skipped": True, "reason": f"{photos} missing"})
        return
    trees = {"after": ROOT, **({"before": args.before.resolve()} if args.before else {})}
    runs = {side: [] for side in trees}
    seeds = [int(x) for x in args.seeds.split(",")]
    for r in range(args.rounds):
        for side in (list(trees) if r % 2 == 0 else list(reversed(trees))):
            with tempfile.TemporaryDirectory(prefix=f"graft-cold-{side}-") as tmp:
                runs[side].append(one_run(trees[side], photos, held_out, Path(tmp), seeds[r % len(seeds)]))
            print(side, runs[side][-1], file=sys.stderr, flush=True)
    med = {side: statistics.median(x["total_s"] for x in rows) for side, rows in runs.items()}
    wall = {side: statistics.median(x["wall_s"] for x in rows) for side, rows in runs.items()}
    held = {side: [x["held_out"] for x in rows] for side, rows in runs.items()}
    figures = {"bench": "cold_run", "set": args.set, "total_s": med, "wall_s": wall, "held_out": held,
               "views_used": {side: sum(x["views_used"] for x in rows) for side, rows in runs.items()}, "runs": runs}
    if "before" in med:
        figures["ratio"] = round(med["before"] / med["after"], 2)
    emit(figures)


if __name__ == "__main__":
    main()
