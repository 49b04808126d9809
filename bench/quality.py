"""Issue 11's protocol: is the figure graft reports the held-out one, and how high is it?

graft is given hymenoptera's train/ ONLY (it draws its own content-hash validation split from it);
val/ is held out and scored afterwards with graft.evaluate. Per configuration: the held-out
accuracy, the val_accuracy graft reported, its cv_accuracy (5-fold on its training photos), and
the wall time of a cold run (fresh feature cache: extraction included) and of a warm one (same
cache). Configurations, interleaved cold then warm:

  today      --backbone lite0 --solver adamw: the closest to the old behaviour that still exists.
             The old head chose its epochs on the very photos it reported; that code path is
             gone (selection now never sees them), so today's exact behaviour is not reproduced
             here; bench/quality_study.py's "today" row re-creates it on cached features.
  default    the new default (lite1, solver chosen by CV)
  lite2      --backbone lite2
  concat     --backbone lite0+lite2 (both networks' features side by side)
  auto       --backbone auto (lite0/lite1/lite2 and their concatenations, by cross-validation on
             graft's training photos)

    .venv/bin/python bench/quality.py [--configs today,default,lite2,concat,auto]

Times on a shared machine are inflated: the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, need_hymenoptera  # noqa: E402

CONFIGS = {
    "today": {"backbone": "lite0", "solver": "adamw"},
    "default": {},
    "lite2": {"backbone": "lite2"},
    "concat": {"backbone": "lite0+lite2"},
    "auto": {"backbone": "auto"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="today,default,lite2,concat,auto")
    args = ap.parse_args()
    data = need_hymenoptera()
    import graft

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs.split(","):
            kw = CONFIGS[name]
            cache = Path(tmp) / f"cache-{name}"
            walls = []
            for temp in ("cold", "warm"):
                t = time.perf_counter()
                m = graft.train(data / "train", Path(tmp) / f"run-{name}-{temp}", cache_dir=cache, progress=False,
                                report=False, **kw).metrics
                walls.append(time.perf_counter() - t)
            ev = graft.evaluate(Path(tmp) / f"run-{name}-warm", data / "val", cache_dir=cache)
            rows[name] = {
                "backbone": m["backbone"]["spec"], "solver": m["head"]["solver"],
                "held_out": round(ev["accuracy"], 4), "held_out_balanced": round(ev["balanced_accuracy"], 4),
                "reported_val": round(m["val_accuracy"], 4),
                "cv": round(m["cv_accuracy"]["mean"], 4), "cv_std": round(m["cv_accuracy"]["std"], 4),
                "n_train": m["n_train"], "n_val": m["n_val"], "n_held_out": ev["n"],
                "cold_s": round(walls[0], 1), "warm_s": round(walls[1], 1),
                "views": {k: m["views"].get(k) for k in ("k", "used", "cv_with", "cv_without", "reason")},
            }
            if m.get("backbone_candidates"):
                rows[name]["candidates"] = m["backbone_candidates"]
            print(f"# {name}: {rows[name]}", flush=True)
    load = os.getloadavg()[0]
    print(f"{'config':<9}{'backbone':<18}{'solver':<8}{'held-out':>9}{'reported':>9}{'cv':>7}{'cold s':>8}{'warm s':>8}"
          f"  views (cv with / without)")
    for name, r in rows.items():
        print(f"{name:<9}{r['backbone']:<18}{r['solver']:<8}{r['held_out']:>9.3f}{r['reported_val']:>9.3f}"
              f"{r['cv']:>7.3f}{r['cold_s']:>8.1f}{r['warm_s']:>8.1f}  {_views(r['views'])}")
    print(f"(load average {load:.1f} on {os.cpu_count()} cores: wall times are inflated by other work)")
    emit({"bench": "quality", "rows": rows, "load_average": round(load, 1)})


def _views(v: dict) -> str:
    if v.get("used") is None:
        return f"not weighed ({v.get('reason')})"
    return f"{'used' if v['used'] else 'not used'} ({v['cv_with']:.3f} / {v['cv_without']:.3f})"


if __name__ == "__main__":
    main()
