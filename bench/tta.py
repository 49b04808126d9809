"""Test-time augmentation (`--tta flip`, `--tta crops`): does averaging a photo's centre crop
with its mirror, or with its four corner crops, help on real photos?

Protocol (issue 11, item 6): graft is given only hymenoptera's `train/` (default settings, it
draws its own validation split), then `graft.evaluate` scores hymenoptera's `val/` (153 photos
it never saw) with each `tta`: accuracy, log loss of the softmax and how many answers change.
The same comparison on the training photos, out of fold (the run's head recipe refitted without
each of 5 folds on centre crops, scoring the held-out fold's views), is what a cross-validated
choice of TTA would see without touching `val/`.

    .venv/bin/python bench/tta.py
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, need_hymenoptera  # noqa: E402

import graft  # noqa: E402
from graft.data import scan_class_folders  # noqa: E402
from graft.heads.folds import stratified_folds, train_rows  # noqa: E402
from graft.heads.probe import fit_probe  # noqa: E402
from graft.backbones.preprocess import tta_views  # noqa: E402
from graft.run.photos import photos_split  # noqa: E402
from graft.run.store import load_head, read_record  # noqa: E402
from graft.use.features import run_features  # noqa: E402

MODES = ("none", "flip", "crops")


def scores(logits, y):
    z = torch.as_tensor(logits, dtype=torch.float64)
    return {"accuracy": round(float((z.argmax(1).numpy() == y).mean()), 4),
            "log_loss": round(float(torch.nn.functional.cross_entropy(z, torch.as_tensor(y))), 4)}


def views(run, samples, cache, mode):
    """-> ([features of each view of `mode`], ok mask of photos every view read)."""
    out, ok = [], np.ones(len(samples), bool)
    for at, mirror in tta_views(mode):
        f, ok_v, _, _ = run_features(run, samples, cache_dir=cache, workers=0, mirror=mirror, at=at)
        out.append(f)
        ok &= ok_v
    return out, ok


def out_of_fold(record, xs, y, keys):
    """Out-of-fold logits, averaged over the views `xs` (L-BFGS at the run's strength, fitted on
    the centre crops xs[0] of the other folds)."""
    rec = record.training.head
    strength = rec.strength or 0.03
    logits = np.zeros((len(y), len(record.classes)))
    for held in stratified_folds(y, 5, keys=keys, seed=rec.seed):
        rows = train_rows(len(y), held)
        head = fit_probe(xs[0][rows], y[rows], len(record.classes), strength).head
        with torch.no_grad():
            logits[held] = (sum(head(torch.from_numpy(x[held])).double() for x in xs) / len(xs)).numpy()
    return logits, rec.solver, strength


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=None, help="folder for the run and the cache (default: a temporary one)")
    args = ap.parse_args()
    root = need_hymenoptera()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        cache = work / "cache"
        run = graft.train(root / "train", work / "run", cache_dir=cache, progress=False, workers=0).run_dir
        record = read_record(run)
        timings, results = {}, {}
        for mode in MODES + ("crops_warm",):  # the first evaluate of a mode computes its views' features
            t = time.perf_counter()
            results[mode] = graft.evaluate(run, root / "val", cache_dir=cache, workers=0,
                                           tta=None if mode == "none" else mode.split("_")[0])
            timings[mode] = round(time.perf_counter() - t, 2)
        # log loss and changed answers, from the same cached features evaluate used
        _, held, _ = scan_class_folders(root / "val", classes=list(record.classes), cache_dir=cache)
        head = load_head(run)
        per_mode = {mode: views(run, held, cache, mode) for mode in MODES}
        ok = np.logical_and.reduce([v[1] for v in per_mode.values()])
        y = np.array([s.label for s in held])[ok]
        with torch.no_grad():
            val_logits = {m: sum(head(torch.from_numpy(f[ok])).double() for f in fs) / len(fs)
                          for m, (fs, _) in per_mode.items()}
        val = {m: scores(z, y) for m, z in val_logits.items()}
        changed = {m: int((val_logits["none"].argmax(1) != z.argmax(1)).sum()) for m, z in val_logits.items()}
        # the training photos, out of fold: what choosing TTA by cross-validation would see
        data = photos_split(record, root / "train", cache_dir=cache)
        train_views = {mode: views(run, data.train, cache, mode) for mode in MODES}
        rows = np.flatnonzero(np.logical_and.reduce([v[1] for v in train_views.values()]))
        ty = np.array([s.label for s in data.train])[rows]
        keys = [data.train[i].digest for i in rows]
        cv = {}
        for mode, (xs, _) in train_views.items():
            logits, solver, strength = out_of_fold(record, [x[rows] for x in xs], ty, keys)
            cv[mode] = scores(logits, ty)
    for mode in MODES:
        print(f"tta {mode:5s} held-out val: accuracy {val[mode]['accuracy']:.4f} log loss {val[mode]['log_loss']:.4f} "
              f"changed {changed[mode]:3d} (graft.evaluate {results[mode]['accuracy']:.4f}, {timings[mode]:.1f} s) | "
              f"training photos out of fold: accuracy {cv[mode]['accuracy']:.4f} log loss {cv[mode]['log_loss']:.4f}")
    print(f"warm crops evaluate {timings['crops_warm']:.1f} s")
    emit({**{f"val_accuracy_{m}": results[m]["accuracy"] for m in MODES},
          **{f"val_log_loss_{m}": val[m]["log_loss"] for m in MODES},
          **{f"val_changed_{m}": changed[m] for m in MODES}, "n_val": int(len(y)),
          **{f"cv_accuracy_{m}": cv[m]["accuracy"] for m in MODES},
          **{f"cv_log_loss_{m}": cv[m]["log_loss"] for m in MODES},
          "n_train": int(len(ty)), "evaluate_s": timings, "backbone": record.backbone.spec,
          "strategy": record.strategy, "solver": solver, "strength": strength})


if __name__ == "__main__":
    main()
