"""The augmented views in bfloat16 (OpenVINO) against float32 (onnxruntime): their cost and the
held-out accuracy of the head trained on them: the gate graft.backbones.bf16_engine passed.

Per set (ants/bees: train/ given, val/ held out; trashnet: train/ given, test/ held out), in one
process and one feature cache: a first run fills the clean features (no views), then
`graft.train(..., strategy="head", backbone="lite1", aug_views=4)` once with `precision="fp32"` and once with
`precision="bf16"` (their order alternates per set), each computing only its own 4 views of every
training photo; the held-out photos are scored once per run with graft.evaluate (clean features,
float32, from the cache). The gate: held-out accuracy within 0.3 points of float32 on both sets.

    .venv/bin/python bench/views_bf16.py [--sets ants_bees,trashnet]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from graft import evaluate, train  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SETS = {"ants_bees": (DATA / "hymenoptera_data", DATA / "hymenoptera_data" / "val"),
        "trashnet": (DATA / "trashnet" / "train", DATA / "trashnet" / "test")}
ACC_POINTS = 0.3


def one_set(name: str, flip: bool, tmp: Path) -> dict:
    photos, held = SETS[name]
    cache = tmp / f"cache-{name}"
    common = dict(strategy="head", backbone="lite1", cache_dir=str(cache), progress=False)  # (the default
    # may weigh other backbones, a concatenation among them, which takes no views)
    train(photos, tmp / f"{name}-clean", aug_views=0, **common)  # the clean features, for both runs
    row = {}
    for precision in ("bf16", "fp32") if flip else ("fp32", "bf16"):
        r = train(photos, tmp / f"{name}-{precision}", aug_views=4, precision=precision, **common)
        m = r.metrics
        acc = evaluate(r.run_dir, held, cache_dir=str(cache))["accuracy"]
        row[precision] = {"views_s": round(m["timings"]["extract_s"], 2), "views": m["cache"]["misses"],
                          "engines": m["cache"]["engines"], "views_used": (m.get("views") or {}).get("used"),
                          "held_out": round(acc, 4)}
        print(name, precision, row[precision], flush=True)
    row["speedup"] = round(row["fp32"]["views_s"] / row["bf16"]["views_s"], 2)
    row["points"] = round(100 * (row["bf16"]["held_out"] - row["fp32"]["held_out"]), 2)
    row["passes"] = abs(row["points"]) <= ACC_POINTS + 1e-9
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default=",".join(SETS))
    args = ap.parse_args()
    names = [s for s in args.sets.split(",") if SETS[s][0].is_dir()]
    if not names:
        print(json.dumps({"skipped": True, "reason": f"{DATA} lacks the sets"}))
        return
    with tempfile.TemporaryDirectory(prefix="graft-views-bf16-") as tmp:
        rows = {name: one_set(name, i % 2 == 1, Path(tmp)) for i, name in enumerate(names)}
    print(json.dumps({"gate_points": ACC_POINTS, "passes": all(r["passes"] for r in rows.values()), **rows}))


if __name__ == "__main__":
    main()
