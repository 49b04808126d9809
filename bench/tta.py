"""Test-time augmentation (`--tta flip`): does averaging a photo's centre crop with its mirror
help on real photos?

Protocol (issue 11, item 6): graft is given only hymenoptera's `train/` (default settings, it
draws its own validation split), then `graft.evaluate` scores hymenoptera's `val/` (153 photos
it never saw) with `tta=None` and `tta="flip"`: accuracy, log loss of the softmax and how many
answers change. The same comparison on the training photos, out of fold (the run's head recipe
refitted without each of 5 folds, scoring the held-out fold's plain and mirrored features), is
what a cross-validated choice of TTA would see without touching `val/`.

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
from graft.folds import stratified_folds, train_rows  # noqa: E402
from graft.probe import fit_probe  # noqa: E402
from graft.run import photos_split, read_run_meta, run_features  # noqa: E402


def scores(logits, y):
    z = torch.as_tensor(logits, dtype=torch.float64)
    return {"accuracy": round(float((z.argmax(1).numpy() == y).mean()), 4),
            "log_loss": round(float(torch.nn.functional.cross_entropy(z, torch.as_tensor(y))), 4)}


def out_of_fold(meta, x, xm, y, keys):
    """Out-of-fold logits of the plain and of the mirrored features (L-BFGS at the run's strength)."""
    rec = meta["training"]["head"]
    strength = rec.get("strength") or 0.03
    c = len(meta["classes"])
    plain, flip = np.zeros((len(y), c)), np.zeros((len(y), c))
    for held in stratified_folds(y, 5, keys=keys, seed=rec.get("seed", 0)):
        head = fit_probe(x[train_rows(len(y), held)], y[train_rows(len(y), held)], c, strength).head
        with torch.no_grad():
            a, b = head(torch.from_numpy(x[held])).double(), head(torch.from_numpy(xm[held])).double()
        plain[held], flip[held] = a.numpy(), ((a + b) / 2).numpy()
    return plain, flip, rec.get("solver"), strength


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=None, help="folder for the run and the cache (default: a temporary one)")
    args = ap.parse_args()
    root = need_hymenoptera()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        cache = work / "cache"
        run = graft.train(root / "train", work / "run", cache_dir=cache, progress=False, workers=0).run_dir
        meta = read_run_meta(run)
        timings = {}
        results = {}
        for name, tta in (("none", None), ("flip", "flip"), ("flip_warm", "flip")):
            t = time.perf_counter()
            results[name] = graft.evaluate(run, root / "val", cache_dir=cache, workers=0, tta=tta)
            timings[name] = round(time.perf_counter() - t, 2)
        # log loss and changed answers, from the same cached features evaluate used
        _, held, _ = scan_class_folders(root / "val", classes=meta["classes"], cache_dir=cache)
        f, ok, head, _ = run_features(run, held, cache_dir=cache, workers=0)
        fm, okm, _, _ = run_features(run, held, cache_dir=cache, workers=0, mirror=True)
        ok &= okm
        y = np.array([s.label for s in held])[ok]
        with torch.no_grad():
            a, b = head(torch.from_numpy(f[ok])).double(), head(torch.from_numpy(fm[ok])).double()
        val = {"none": scores(a, y), "flip": scores((a + b) / 2, y), "mirror_alone": scores(b, y)}
        changed = int((a.argmax(1) != ((a + b) / 2).argmax(1)).sum())
        # the training photos, out of fold: what choosing TTA by cross-validation would see
        data = photos_split(meta, root / "train", cache_dir=cache)
        x, okx, _, _ = run_features(run, data.train, cache_dir=cache, workers=0)
        xm, okxm, _, _ = run_features(run, data.train, cache_dir=cache, workers=0, mirror=True)
        rows = np.flatnonzero(okx & okxm)
        ty = np.array([s.label for s in data.train])[rows]
        plain, flip, solver, strength = out_of_fold(meta, x[rows], xm[rows], ty, [data.train[i].digest for i in rows])
        cv = {"none": scores(plain, ty), "flip": scores(flip, ty)}
    for name in ("none", "flip"):
        print(f"tta {name:5s} held-out val: accuracy {val[name]['accuracy']:.4f} log loss {val[name]['log_loss']:.4f} "
              f"(graft.evaluate {results[name]['accuracy']:.4f}, {timings[name]:.1f} s) | training photos out of "
              f"fold: accuracy {cv[name]['accuracy']:.4f} log loss {cv[name]['log_loss']:.4f}")
    print(f"answers changed by flip: {changed} of {len(y)}; warm flip evaluate {timings['flip_warm']:.1f} s")
    emit({"val_accuracy_none": results["none"]["accuracy"], "val_accuracy_flip": results["flip"]["accuracy"],
          "val_log_loss_none": val["none"]["log_loss"], "val_log_loss_flip": val["flip"]["log_loss"],
          "val_accuracy_mirror_alone": val["mirror_alone"]["accuracy"], "val_changed": changed, "n_val": int(len(y)),
          "cv_accuracy_none": cv["none"]["accuracy"], "cv_accuracy_flip": cv["flip"]["accuracy"],
          "cv_log_loss_none": cv["none"]["log_loss"], "cv_log_loss_flip": cv["flip"]["log_loss"],
          "n_train": int(len(ty)), "evaluate_s": timings, "backbone": meta["backbone"]["spec"],
          "strategy": meta["strategy"], "solver": solver, "strength": strength})


if __name__ == "__main__":
    main()
