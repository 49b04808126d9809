"""Issue 20, item 2: `graft predict` right after `graft train`, with no export step.

One `graft train PHOTOS/train --out RUN` (default settings; the feature cache as it is), then,
interleaved round by round in fresh interpreters:

  before  a copy of RUN without what train now writes for prediction (model.onnx, export.json,
          predict_onnx.py): what `graft train` used to leave, so predict rebuilt the network in torch
  after   RUN exactly as `graft train` left it: its joined ONNX export runs on onnxruntime

for a one-photo `graft predict RUN PHOTO` (wall clock) and for loading a Predictor in a fresh
interpreter (seconds from `import graft.use.predictor` to the loaded Predictor). Also printed:
what writing the export cost the training run (metrics.json timings.export_s). Medians.

    .venv/bin/python bench/predict_after_train.py [--rounds 5] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, need_hymenoptera  # noqa: E402

TARGETS = {"predict_s": 1.5, "load_s": 0.5}
LOAD = ("import sys, time; t = time.perf_counter(); from graft.use.predictor import Predictor; "
        "p = Predictor(sys.argv[1]); print(time.perf_counter() - t, p.engine.name)")


def wall(argv, env) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])}... failed: {out.stderr.strip()[-400:]}")
    return time.perf_counter() - t0, out.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cache-dir", help="the feature cache (default: graft's)")
    args = ap.parse_args()
    data = need_hymenoptera()
    photo = str(sorted((data / "val").rglob("*.jpg"))[0])
    exe, py = str(Path(sys.executable).with_name("graft")), sys.executable
    env = dict(os.environ, **({"GRAFT_CACHE_DIR": args.cache_dir} if args.cache_dir else {}))
    with tempfile.TemporaryDirectory(prefix="graft-predict-after-train-") as tmp:
        run, before = Path(tmp) / "run", Path(tmp) / "before"
        train_s, _ = wall([exe, "train", str(data / "train"), "--out", str(run), "--quiet"], env)
        metrics = json.loads((run / "metrics.json").read_text())
        shutil.copytree(run, before)
        for name in ("model.onnx", "export.json", "predict_onnx.py"):
            (before / name).unlink(missing_ok=True)
        sides = {"before": before, "after": run}
        predict: dict[str, list[float]] = {k: [] for k in sides}
        load: dict[str, list[float]] = {k: [] for k in sides}
        engines: dict[str, str] = {}
        for r in range(args.rounds):
            for side in (sides if r % 2 == 0 else list(sides)[::-1]):
                predict[side].append(wall([exe, "predict", str(sides[side]), photo], env)[0])
                seconds, engine = wall([py, "-c", LOAD, str(sides[side])], env)[1].split()
                load[side].append(float(seconds))
                engines[side] = engine
            print(f"  round {r + 1}: " + ", ".join(f"{k} predict {predict[k][-1]:.2f}s load {load[k][-1]:.2f}s"
                                                  for k in sides), file=sys.stderr)
    med = {f"{what}_s": {k: round(statistics.median(v), 3) for k, v in d.items()}
           for what, d in (("predict", predict), ("load", load))}
    print(f"\nmedians of {args.rounds}, load average {os.getloadavg()[0]:.1f}:")
    for what in ("predict", "load"):
        m = med[f"{what}_s"]
        print(f"  {what:8} before {m['before']:6.2f}s  after {m['after']:6.2f}s  "
              f"{m['before'] / m['after']:5.1f}x  (target {TARGETS[what + '_s']} s)")
    emit({**med, "ratio_predict": round(med["predict_s"]["before"] / med["predict_s"]["after"], 2),
          "engines": engines, "export": metrics.get("export"), "export_s": metrics["timings"].get("export_s"),
          "train_wall_s": round(train_s, 2), "targets": TARGETS,
          "met": {k: med[f"{k}_s"]["after"] <= TARGETS[f"{k}_s"] for k in ("predict", "load")},
          "load_avg": round(os.getloadavg()[0], 2)})


if __name__ == "__main__":
    main()
