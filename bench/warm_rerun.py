"""A warm rerun should build nothing (issue 21): hymenoptera copied afresh, then `graft train PHOTOS
--out rN` with default settings three times on one cache (cold, warm, warm), for this tree and,
with --before DIR, for another graft tree (e.g. HEAD exported by `git archive HEAD graft`).

The copy's file times are set JUST_COPIED seconds ahead: a process starts in a few seconds here,
so without it the photos would already look settled when the cold run reads them, while a user who
copies photos and trains at once has the cold run read them within the digest index's racy margin
(graft.data.digests), which used to cost the first warm rerun a second read of every photo.

Each run is its own process (`python -m graft`, as a user runs it). Per run: graft's own total
(metrics.json timings.total_s), the wall time of the process, the photo files opened (apart from
those the report opens for its thumbnails), whether a network was built (any Conv2d made), and
the feature cache's misses. One JSON line at the end.

    .venv/bin/python bench/warm_rerun.py [--before /tmp/graft-before]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, need_hymenoptera  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNS = ("cold", "warm", "warm again")
JUST_COPIED = 20  # seconds: longer than a process's start and scan here, shorter than a cold extraction

# Run in the child: counts photo opens (by the stack, the report's apart) and Conv2d made, then graft's CLI.
PROBE = r"""
import atexit, json, os, runpy, sys
photos, opened = os.environ["BENCH_PHOTOS"], {"run": set(), "report": set()}
def hook(event, args):
    path = os.fspath(args[0]) if event == "open" and isinstance(args[0], (str, os.PathLike)) else None
    if isinstance(path, str) and path.startswith(photos):
        f, by = sys._getframe(1), "run"
        while f is not None:
            if "/graft/report/" in f.f_code.co_filename:
                by = "report"
                break
            f = f.f_back
        opened[by].add(path)
sys.addaudithook(hook)
import torch
made, init = [], torch.nn.Conv2d.__init__
def counting(self, *a, **k):
    made.append(1)
    init(self, *a, **k)
torch.nn.Conv2d.__init__ = counting
atexit.register(lambda: print("BENCH " + json.dumps({"photo_opens": len(opened["run"]),
    "report_opens": len(opened["report"]), "network_built": bool(made)}), file=sys.stderr))
sys.argv = ["graft", *sys.argv[1:]]
runpy.run_module("graft", run_name="__main__")
"""


def one_run(tree: Path, photos: Path, out: Path, cache: Path, work: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "GRAFT_CACHE_DIR": str(cache), "BENCH_PHOTOS": str(photos)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PROBE, "train", str(photos), "--out", str(out)], cwd=work, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"graft train failed ({tree}):\n{proc.stderr[-3000:]}")
    probe = json.loads(next(line for line in proc.stderr.splitlines() if line.startswith("BENCH "))[6:])
    m = json.loads((out / "metrics.json").read_text())
    return {"total_s": m["timings"]["total_s"], "wall_s": round(wall, 2), **probe,
            "cache_misses": m["cache"]["misses"], "skipped": len(m["skipped"]), "val_accuracy": m["val_accuracy"]}


def series(tree: Path, data: Path, work: Path) -> list[dict]:
    """A fresh copy of the photos (new file times, as after a copy) and a fresh cache, then RUNS."""
    photos, cache = work / "photos", work / "cache"
    shutil.copytree(data, photos)
    ahead = time.time() + JUST_COPIED
    for f in photos.rglob("*"):
        if f.is_file():
            os.utime(f, (ahead, ahead))
    out = []
    for i, name in enumerate(RUNS):
        out.append({"run": name, **one_run(tree, photos, work / f"r{i}", cache, work)})
        print(tree, out[-1], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, help="another graft tree (its folder holding graft/) to compare with")
    args = ap.parse_args()
    data = need_hymenoptera()
    trees = {"after": ROOT, **({"before": args.before.resolve()} if args.before else {})}
    figures = {}
    for side, tree in trees.items():
        with tempfile.TemporaryDirectory(prefix=f"graft-warm-{side}-") as tmp:
            figures[side] = series(tree, data, Path(tmp))
    emit({"bench": "warm_rerun", "runs": list(RUNS), **figures})


if __name__ == "__main__":
    main()
