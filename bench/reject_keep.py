"""`--reject auto` on photos the run never saw: how many real ants and bees it keeps, and how
many photos of neither class it refuses, with the thresholds fitted the old way and the new way.

Protocol (issue 11, item 7): graft is given only hymenoptera's `train/` (it draws its own
validation split from it), `graft calibrate` runs on the same `train/` folder, and then every
photo of hymenoptera's `val/` (153 photos of the two classes, never seen by training or
calibration) goes through the calibrated rule once: "kept" = not answered `unknown`, "kept and
right" = also the true class. The photos of neither class are scikit-image's sample pictures
(a cat, a coffee cup, a rocket, an astronaut, textures, ...): few, and not a quality measure of
their own, only a check that keeping more real photos did not open the door to everything.

  before: what `graft calibrate` did until now: temperature and confidence threshold (target
          accuracy 0.99) fitted on the run's own validation photos, the novelty threshold the
          0.99 quantile of the leave-one-out distances of its training + validation photos
          (re-implemented here from graft.use.calibrate's pieces, so both rows run on one run)
  after:  graft.use.calibrate.calibrate_run with its defaults: thresholds fitted on out-of-fold
          predictions of the training photos, at least --keep 0.95 of them kept

    .venv/bin/python bench/reject_keep.py
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
from _common import emit, need_hymenoptera  # noqa: E402

import graft  # noqa: E402
from graft.use.calibrate import (calibrate_run, choose_threshold, fit_temperature, knn_distance, load_novelty,  # noqa: E402
                             softmax)
from graft.data import scan_class_folders  # noqa: E402
from graft.data.folder import Sample  # noqa: E402
from graft.run.photos import photos_split  # noqa: E402
from graft.run.store import read_record  # noqa: E402
from graft.use.features import run_features  # noqa: E402


def unit(x):
    x = torch.as_tensor(x).float()
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def old_rule(run, data, cache):
    """The calibration graft made before this change, on the run's own train/val split."""
    feats, ok, head, _ = run_features(run, data.val + data.train, cache_dir=cache, workers=0)
    n_val = len(data.val)
    val_ok = np.flatnonzero(ok[:n_val])
    with torch.no_grad():
        logits = head(torch.from_numpy(feats[val_ok])).double().numpy()
    labels = np.array([data.val[i].label for i in val_ok])
    t = fit_temperature(logits, labels)
    p = softmax(logits, t)
    tau = choose_threshold(p.max(1), p.argmax(1) == labels, 0.99)["threshold"]
    reference = unit(unit(feats[np.flatnonzero(ok)]).half().float())  # stored as float16, as graft did
    k = max(1, min(10, len(reference) // 100))
    loo = knn_distance(reference, reference, k, leave_one_out=True)
    return {"temperature": t, "threshold": tau, "novelty_threshold": float(np.quantile(loo, 0.99, method="higher")),
            "distance": lambda f: knn_distance(unit(f), reference, k)}


def new_rule(run, photos, cache):
    cal = calibrate_run(run, photos, cache_dir=cache, workers=0)
    novelty = load_novelty(run, cal)
    return {"temperature": cal["temperature"], "threshold": cal["threshold"],
            "novelty_threshold": cal["novelty"]["threshold"], "distance": lambda f: novelty.distance(torch.as_tensor(f)),
            "calibration": cal}


def outcome(rule, head, feats, labels=None):
    with torch.no_grad():
        logits = head(torch.from_numpy(feats)).double().numpy()
    p = softmax(logits, rule["temperature"])
    novelty = rule["distance"](feats)
    kept = (p.max(1) >= rule["threshold"]) & (novelty <= rule["novelty_threshold"])
    out = {"n": int(len(feats)), "kept": round(float(kept.mean()), 4)}
    if labels is not None:
        right = p.argmax(1) == labels
        out.update(accuracy=round(float(right.mean()), 4), kept_and_right=round(float((kept & right).mean()), 4),
                   accuracy_of_kept=round(float(right[kept].mean()), 4) if kept.any() else None,
                   refused_by_confidence=int((p.max(1) < rule["threshold"]).sum()),
                   refused_by_novelty=int((novelty > rule["novelty_threshold"]).sum()))
    return out


def neither_photos():
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    files = sorted(f for f in folder.iterdir() if f.suffix in (".png", ".jpg"))
    return [Sample(f, 0, hashlib.sha256(f.read_bytes()).hexdigest()) for f in files]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=None, help="folder for the run and the cache (default: a temporary one)")
    args = ap.parse_args()
    root = need_hymenoptera()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        cache = work / "cache"
        t0 = time.perf_counter()
        run = graft.train(root / "train", work / "run", cache_dir=cache, progress=False, workers=0).run_dir
        record = read_record(run)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        before = old_rule(run, photos_split(record, root / "train", cache_dir=cache), cache)
        after = new_rule(run, root / "train", cache)
        calibrate_s = time.perf_counter() - t0
        _, held, _ = scan_class_folders(root / "val", classes=list(record.classes), cache_dir=cache)
        feats, ok, head, _ = run_features(run, held, cache_dir=cache, workers=0)
        labels = np.array([s.label for s in held])[ok]
        odd = neither_photos()
        odd_feats, odd_ok, _, _ = run_features(run, odd, cache_dir=cache, workers=0)
        rows = {}
        for name, rule in (("before", before), ("after", after)):
            rows[name] = {"in_class": outcome(rule, head, feats[ok], labels),
                          "neither": outcome(rule, head, odd_feats[odd_ok]),
                          "temperature": round(rule["temperature"], 4), "threshold": round(rule["threshold"], 4),
                          "novelty_threshold": round(rule["novelty_threshold"], 4)}
    for name, r in rows.items():
        i, n = r["in_class"], r["neither"]
        print(f"{name:7s} T={r['temperature']:.3f} conf>={r['threshold']:.3f} novelty<={r['novelty_threshold']:.3f}: "
              f"held-out ants/bees kept {i['kept']:.3f} (kept and right {i['kept_and_right']:.3f}, accuracy of "
              f"kept {i['accuracy_of_kept']}, refused by confidence {i['refused_by_confidence']}, by novelty "
              f"{i['refused_by_novelty']} of {i['n']}); photos of neither refused {1 - n['kept']:.3f} of {n['n']}")
    cal = after["calibration"]
    fit = cal.get("fit", {})
    emit({"held_out_accuracy": rows["after"]["in_class"]["accuracy"],
          "kept_before": rows["before"]["in_class"]["kept"], "kept_after": rows["after"]["in_class"]["kept"],
          "kept_and_right_before": rows["before"]["in_class"]["kept_and_right"],
          "kept_and_right_after": rows["after"]["in_class"]["kept_and_right"],
          "neither_refused_before": round(1 - rows["before"]["neither"]["kept"], 4),
          "neither_refused_after": round(1 - rows["after"]["neither"]["kept"], 4),
          "n_held_out": rows["after"]["in_class"]["n"], "n_neither": rows["after"]["neither"]["n"],
          "rows": rows, "fit_kept_after": fit.get("kept"), "fit_how": fit.get("how"),
          "train_s": round(train_s, 1), "calibrate_s": round(calibrate_s, 1),
          "strategy": record.strategy, "backbone": record.backbone.spec})


if __name__ == "__main__":
    main()
