"""`--keep K` on photos the run never saw: the share of real photos of the run's classes that
`--reject auto` keeps, out of fold on the training photos (where the thresholds are chosen) and
on a held-out folder nothing was chosen on, with the thresholds chosen the old way and the new
way; and how many photos of neither class each refuses.

Protocol (issue 20, item 5): graft is given only the photo set's `train/` (it draws its own
validation split from it, then refits on all of it); the thresholds are chosen on the training
photos alone, out of fold; then every photo of the held-out folder goes through the rule once:
"kept" = not answered `unknown`. The "chance range" is the 90% range a share measured on that
many photos can show by chance (graft.use.calibrate.keep_range).

  ants_bees           hymenoptera_data/train (default `graft train`), held out: hymenoptera_data/val (153)
  ants_bees_trainval  hymenoptera_data itself (train/ + val/: val/ is the run's validation, what
                      issue 20 saw), held out: the same val/, also the run's `graft calibrate` figure
  trashnet            trashnet/train (`--strategy head`), held out: trashnet/test (629)

  before: thresholds that keep `keep` plus one standard error of the photos fitted on (what
          graft.use.calibrate did until issue 20; re-implemented below so both rows run on one run)
  after:  graft.use.calibrate.choose_thresholds: refusals within the exact binomial bound, so
          that new photos are kept at least `keep` of the time, nine times in ten

Everything both rules see (out-of-fold logits, temperature, leave-one-out novelty) is computed
once per photo set, exactly as graft.use.calibrate.calibrate_run computes it (and checked
against calibrate_run itself at the default keep). `--work DIR` keeps the runs and the feature
cache there, and a later call reuses them (the same cache for before and after).

    .venv/bin/python bench/reject_keep.py --work /tmp/reject_keep
"""

import argparse
import hashlib
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HYMENOPTERA, emit  # noqa: E402

import graft  # noqa: E402
from graft.data import scan_class_folders  # noqa: E402
from graft.data.folder import Sample  # noqa: E402
from graft.run.store import read_record  # noqa: E402
from graft.use.calibrate import (TrainingReference, calibrate_run, choose_threshold, choose_thresholds,  # noqa: E402
                                 fit_photos, fit_temperature, keep_range, knn_distance, reference_rows, score_photos,
                                 softmax, unit_rows)
from graft.use.features import run_features  # noqa: E402

SETS = {"ants_bees": (HYMENOPTERA, "train", "val", {}),  # graft draws val from train/, then refits on all
        "ants_bees_trainval": (HYMENOPTERA, ".", "val", {}),  # PHOTOS/train + PHOTOS/val: val/ is the run's own
        "trashnet": (HYMENOPTERA.parent / "trashnet", "train", "test", {"strategy": "head"})}


def old_choose(conf, correct, novelty, *, keep, target_accuracy=0.99):
    """The thresholds as graft chose them before issue 20: `keep` plus one standard error of the
    photos fitted on kept by both checks together, novelty at its 0.99 quantile."""
    n = len(conf)
    want = min(1.0, keep + math.sqrt(keep * (1.0 - keep) / n))
    q = max(0.99, 1.0 - (1.0 - want) / 2)
    nov_t = float(np.quantile(novelty, q, method="higher"))
    passes = novelty <= nov_t
    need = min(n, math.ceil(want * n - 1e-9))
    kept_conf = np.sort(conf[passes])[::-1]
    tau_keep = math.inf if need <= 0 else float(kept_conf[need - 1]) if need < len(kept_conf) else 0.0
    tau_target = choose_threshold(conf[passes], correct[passes], target_accuracy)["threshold"]
    return {"threshold": min(tau_target, tau_keep), "novelty_threshold": nov_t}


def kept_share(choice, conf, novelty):
    if not len(conf):  # a run refitted on its validation photos has none left
        return None
    by_conf, by_nov = conf < choice["threshold"], novelty > choice["novelty_threshold"]
    kept = ~(by_conf | by_nov)
    return {"n": int(len(conf)), "kept": round(float(kept.mean()), 4), "kept_n": int(kept.sum()),
            "range": keep_range(int(kept.sum()), int(len(conf))),
            "refused_by_confidence": int(by_conf.sum()), "refused_by_novelty": int(by_nov.sum())}


def neither_photos():
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    files = sorted(f for f in folder.iterdir() if f.suffix in (".png", ".jpg"))
    return [Sample(f, 0, hashlib.sha256(f.read_bytes()).hexdigest()) for f in files]


def scored(run, photos, cache):
    """What the thresholds are chosen on, as calibrate_run computes it: out-of-fold confidence,
    right or wrong, leave-one-out novelty of the training photos; and the run's own validation
    photos scored as new ones."""
    record = read_record(run)
    ph = score_photos(run, record, photos, cache_dir=cache, workers=0)
    fit = fit_photos(run, record, ph)
    t = fit_temperature(fit.logits, fit.labels)
    p = softmax(fit.logits, t)
    reference = TrainingReference(ph.feats, reference_rows(ph.ok, ph.n_train, 4096))
    val = ph.val_rows
    return {"record": record, "t": t, "reference": reference, "conf": p.max(1), "right": p.argmax(1) == fit.labels,
            "novelty": reference.of(fit.rows), "fit_how": fit.how,
            "val_conf": softmax(ph.logits(val), t).max(1), "val_novelty": reference.of(val)}


def new_photos(run, samples, cache, t, reference):
    feats, ok, head, _ = run_features(run, samples, cache_dir=cache, workers=0)
    feats = feats[ok]
    with torch.no_grad():
        conf = softmax(head(torch.from_numpy(feats)).double().numpy(), t).max(1)
    return conf, knn_distance(unit_rows(torch.from_numpy(feats).float()), reference.unit, reference.k)


def one_set(name, work, keeps):
    root, train_name, held_name, settings = SETS[name]
    cache = work / "cache"
    run = work / name
    t0 = time.perf_counter()
    if not (run / "model.json").is_file():
        graft.train(root / train_name, run, cache_dir=cache, progress=False, workers=0, **settings)
    train_s = time.perf_counter() - t0
    s = scored(run, root / train_name, cache)
    _, held, _ = scan_class_folders(root / held_name, classes=list(s["record"].classes), cache_dir=cache)
    h_conf, h_nov = new_photos(run, held, cache, s["t"], s["reference"])
    o_conf, o_nov = new_photos(run, neither_photos(), cache, s["t"], s["reference"])
    rows = {}
    for keep in keeps:
        for rule, choose in (("before", old_choose), ("after", choose_thresholds)):
            c = choose(s["conf"], s["right"], s["novelty"], keep=keep)
            rows[f"{rule}_{keep:g}"] = {
                "threshold": round(c["threshold"], 4), "novelty_threshold": round(c["novelty_threshold"], 4),
                "out_of_fold": kept_share(c, s["conf"], s["novelty"]),
                "run_val": kept_share(c, s["val_conf"], s["val_novelty"]),
                "held_out": kept_share(c, h_conf, h_nov),
                "neither_refused": round(1 - kept_share(c, o_conf, o_nov)["kept"], 4)}
    cal = calibrate_run(run, root / train_name, cache_dir=cache, workers=0)  # the real thing, default keep
    assert abs(cal["threshold"] - rows["after_0.95"]["threshold"]) < 1e-4, "calibrate_run chose another threshold"
    return {"rows": rows, "held_out": f"{root.name}/{held_name}", "fit_how": s["fit_how"], "train_s": round(train_s, 1),
            "strategy": s["record"].strategy, "backbone": s["record"].backbone.spec, "temperature": round(s["t"], 4)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=None, help="folder for the runs and the cache, reused by a later call "
                                                 "(default: a temporary one)")
    ap.add_argument("--sets", default="ants_bees,ants_bees_trainval,trashnet",
                    help="comma-separated: ants_bees, ants_bees_trainval, trashnet")
    ap.add_argument("--keeps", default="0.9,0.95,0.99", help="comma-separated --keep values")
    args = ap.parse_args()
    names = [n for n in args.sets.split(",") if (SETS[n][0] / SETS[n][1]).is_dir()]
    if not names:
        emit({"skipped": True, "reason": f"no photo set of {args.sets} under {HYMENOPTERA.parent}"})
        return
    keeps = [float(k) for k in args.keeps.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        out = {name: one_set(name, work, keeps) for name in names}
    for name, r in out.items():
        for key, row in r["rows"].items():
            o, v, h = row["out_of_fold"], row["run_val"], row["held_out"]
            val = f"run's val {v['kept']:.3f} ({v['kept_n']}/{v['n']})" if v else "no run val (refitted on it)"
            print(f"{name:9s} {key:11s} conf>={row['threshold']:.4f} novelty<={row['novelty_threshold']:.4f}: kept "
                  f"out of fold {o['kept']:.3f} ({o['kept_n']}/{o['n']}), {val}, "
                  f"{r['held_out']} {h['kept']:.3f} ({h['kept_n']}/{h['n']}, "
                  f"refused {h['refused_by_confidence']} by confidence, {h['refused_by_novelty']} by novelty; "
                  f"chance range {h['range'][0]:.3f}-{h['range'][1]:.3f}); neither refused {row['neither_refused']:.3f}")
    emit({**{f"{name}_{key}_{where}_kept": row[where]["kept"] for name, r in out.items()
             for key, row in r["rows"].items() for where in ("out_of_fold", "held_out")}, "sets": out})


if __name__ == "__main__":
    main()
