"""Which backbone and which head should `graft train` default to? Measured on hymenoptera with
every choice made on train/ alone, and val/ predicted once per configuration for the held-out
figure.

For each backbone (lite0, lite1, lite2 and the concatenation lite0+lite2), on the same cached
features:
  today        AdamW head as graft trains it now: a content-hash 20% of train/ held out, early
               stopping and best epoch picked on it; "reported" is its accuracy on that 20%
  lbfgs-80     the L-BFGS probe, L2 chosen by 5-fold CV, on the same 80% (like for like with today)
  adamw-refit  AdamW epochs chosen by 5-fold CV on all of train/, then refitted on all of it
  lbfgs-refit  L2 chosen by 5-fold CV on all of train/, then refitted on all of it
  auto         whichever of the two refits cross-validated better (graft.heads.search.choose_head)
plus each backbone's cold extraction time for train/ (what a cold `graft train` given train/
pays) and for val/. Then an imbalance check: an uneven subsample of train/ (one class cut to a
quarter), scored on all of val/ with balance none vs auto. Optional: `--flip lite1,lite2` adds
heads trained on clean + mirrored views (and flip test-time augmentation); `--cold-train
lite0,lite1` times a cold `graft train` CLI run per backbone, in a fresh process and cache.

    .venv/bin/python bench/quality_study.py [--backbones lite0,lite1,lite2,lite0+lite2] [--cache DIR]
                                            [--flip lite1,lite2] [--cold-train lite0,lite1,lite2]

Without --cache the features go to a fresh temporary cache, so extraction times are cold.
Times on a shared machine are inflated; the load average is printed beside them.
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

from graft.backbones import resolve_backbone  # noqa: E402
from graft.cache import FeatureCache  # noqa: E402
from graft.data import scan_class_folders, scan_photos  # noqa: E402
from graft.heads.metrics import classification_metrics  # noqa: E402
from graft.features.extract import cache_namespace, extract_features  # noqa: E402
from graft.heads.softmax import HeadConfig, train_head  # noqa: E402
from graft.heads.search import choose_head  # noqa: E402


def extract(spec, samples, cache_root):
    """(features, wall seconds, CPU seconds, misses) for one bundled backbone, through graft's
    cache. CPU seconds include the loader workers' (reaped child processes): on a machine shared
    with other work the wall time is inflated, while CPU seconds / cores bounds the idle time."""
    src = resolve_backbone(spec)
    cache = FeatureCache(cache_root, cache_namespace(src))
    c0, t = os.times(), time.perf_counter()
    feats, ok, stats = extract_features(src.build, [s.digest for s in samples], [s.path for s in samples], cache,
                                        load=src.preprocessing.load, progress=False)
    wall, c1 = time.perf_counter() - t, os.times()
    cpu = sum(getattr(c1, f) - getattr(c0, f) for f in ("user", "system", "children_user", "children_system"))
    if not ok.all():
        raise SystemExit(f"{spec}: {int((~ok).sum())} photos could not be read")
    return feats, wall, cpu, stats.misses


def flipped(spec, samples) -> np.ndarray:
    """Features of the mirrored photos (the backbone's evaluation preprocessing, then a
    horizontal flip), uncached: the study's flip views and flip test-time augmentation."""
    from graft.backbones import load_backbone

    bb = load_backbone(spec).eval()
    pre, out = bb.preprocessing, []
    with torch.inference_mode():
        for i in range(0, len(samples), 32):
            x = torch.stack([pre.load(s.path) for s in samples[i:i + 32]]).flip(-1)
            out.append(bb(pre.normalize(x).contiguous(memory_format=torch.channels_last)).numpy())
    return np.concatenate(out)


def flip_rows(name, x_tr, f_tr, y_tr, keys, x_va, f_va, y_va, classes) -> list[dict]:
    """Heads trained on clean + mirrored views (N, 2, D), scored on clean val/ photos; the
    flip-TTA figure averages the logits of each val photo and its mirror image."""
    rows = []
    views = np.stack([x_tr, f_tr], axis=1)
    for config, solvers in (("flip adamw", ("adamw",)), ("flip lbfgs", ("lbfgs",)), ("flip auto", ("lbfgs", "adamw"))):
        t = time.perf_counter()
        c = choose_head(views, y_tr, len(classes), solvers=solvers, keys=keys)
        row = _row(name, config, c, time.perf_counter() - t, held_out(c.head, x_va, y_va, classes))
        with torch.no_grad():
            logits = c.head(torch.from_numpy(x_va)) + c.head(torch.from_numpy(f_va))
        row["chosen"] += f"; flip-TTA {float((logits.argmax(1).numpy() == y_va).mean()):.4f}"
        rows.append(row)
    return rows


def held_out(head, x, y, classes) -> dict:
    with torch.no_grad():
        pred = head(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).argmax(1).numpy()
    m = classification_metrics(y, pred, classes)
    return {"accuracy": round(m["accuracy"], 4), "balanced_accuracy": round(m["balanced_accuracy"], 4),
            "errors": int((pred != y).sum())}


def cold_train(spec, root, tmp) -> dict:
    """One cold `graft train PHOTOS/train --backbone SPEC --strategy head` (today's head, its
    report included) in a fresh process with an empty cache: wall and CPU seconds, the figure
    it reports, and its accuracy on val/ by `graft.evaluate` afterwards (not timed)."""
    import json
    import subprocess

    graft = str(Path(sys.executable).with_name("graft"))
    run, cache = Path(tmp) / f"run-{spec}", Path(tmp) / f"cold-cache-{spec}"
    env = {**os.environ, "GRAFT_CACHE_DIR": str(cache)}
    la, c0, t = load_avg(), os.times(), time.perf_counter()
    subprocess.run([graft, "train", str(root / "train"), "--out", str(run), "--backbone", spec,
                    "--strategy", "head", "--quiet"], env=env, check=True)
    wall, c1 = time.perf_counter() - t, os.times()
    cpu = (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)
    metrics = json.loads((run / "metrics.json").read_text())
    import graft as g

    ev = g.evaluate(run, root / "val", cache_dir=cache)
    return {"backbone": spec, "cold_wall_s": round(wall, 2), "cold_cpu_s": round(cpu, 2), "load_avg_before": la,
            "reported_val_accuracy": round(metrics["val_accuracy"], 4), "held_out": round(ev["accuracy"], 4)}


def load_avg() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def study_backbone(name, x_tr, y_tr, keys, inner_tr, inner_val, x_va, y_va, classes) -> list[dict]:
    rows = []
    k = len(classes)
    # today: AdamW head, early stopping on a 20% content-hash split of train/
    t = time.perf_counter()
    fit = train_head(x_tr[inner_tr], y_tr[inner_tr], x_tr[inner_val], y_tr[inner_val], k, HeadConfig())
    reported = held_out(fit.head, x_tr[inner_val], y_tr[inner_val], classes)["accuracy"]
    rows.append({"backbone": name, "config": "today", "reported": reported, "cv": None, "cv_std": None,
                 "chosen": f"epoch {fit.best_epoch}", "fit_s": round(time.perf_counter() - t, 2),
                 **held_out(fit.head, x_va, y_va, classes)})
    # the probe on the same 80%
    t = time.perf_counter()
    c = choose_head(x_tr[inner_tr], y_tr[inner_tr], k, solvers=("lbfgs",), keys=[keys[i] for i in inner_tr])
    rows.append(_row(name, "lbfgs-80", c, time.perf_counter() - t, held_out(c.head, x_va, y_va, classes)))
    # refits on all of train/
    for config, solvers in (("adamw-refit", ("adamw",)), ("lbfgs-refit", ("lbfgs",)), ("auto", ("lbfgs", "adamw"))):
        t = time.perf_counter()
        c = choose_head(x_tr, y_tr, k, solvers=solvers, keys=keys)
        rows.append(_row(name, config, c, time.perf_counter() - t, held_out(c.head, x_va, y_va, classes)))
    return rows


def _row(name, config, c, seconds, ho) -> dict:
    chosen = f"l2={c.strength:.3g}" if c.solver == "lbfgs" else f"{c.epochs} epochs"
    return {"backbone": name, "config": config, "reported": None, "cv": round(c.cv["accuracy"]["mean"], 4),
            "cv_std": round(c.cv["accuracy"]["std"], 4), "chosen": f"{c.solver} {chosen}",
            "fit_s": round(seconds, 2), **ho}


def imbalance(name, x_tr, y_tr, keys, x_va, y_va, classes) -> list[dict]:
    """Cut one class of train/ to a quarter (the photos with the smallest digests), fit with
    balance none and auto, score on all of val/."""
    rows = []
    for small in range(len(classes)):
        idx = [i for i in range(len(y_tr)) if y_tr[i] != small]
        mine = sorted((i for i in range(len(y_tr)) if y_tr[i] == small), key=lambda i: keys[i])
        idx = sorted(idx + mine[: len(mine) // 4])
        counts = np.bincount(y_tr[idx], minlength=len(classes)).tolist()
        for balance in ("none", "auto"):
            c = choose_head(x_tr[idx], y_tr[idx], len(classes), keys=[keys[i] for i in idx], balance=balance)
            rows.append({"backbone": name, "train_counts": counts, "balance": balance,
                         "weighted": c.class_weight is not None, "cv": round(c.cv["accuracy"]["mean"], 4),
                         "cv_balanced": round(c.cv["balanced_accuracy"]["mean"], 4),
                         "chosen": f"{c.solver} " + (f"l2={c.strength:.3g}" if c.solver == "lbfgs" else f"{c.epochs} ep"),
                         **held_out(c.head, x_va, y_va, classes)})
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbones", default="lite0,lite1,lite2,lite0+lite2")
    ap.add_argument("--cache", default=None, help="feature cache to use (default: a fresh one: cold times)")
    ap.add_argument("--imbalance-backbones", default="lite0,lite2")
    ap.add_argument("--cold-train", default="", help="backbones to time a cold `graft train` with (e.g. lite0,lite1)")
    ap.add_argument("--flip", default="", help="backbones to also try with mirrored views (e.g. lite1,lite2)")
    args = ap.parse_args()
    root = need_hymenoptera()
    torch.manual_seed(0)
    data = scan_photos(root / "train")  # what graft given only train/ sees: its own 20% split
    classes = data.classes
    _, val_samples, _ = scan_class_folders(root / "val", classes=classes)
    train_samples = sorted(data.train + data.val, key=lambda s: str(s.path))
    inner_val_digests = {s.digest for s in data.val}
    y_tr = np.array([s.label for s in train_samples])
    y_va = np.array([s.label for s in val_samples])
    keys = [s.digest for s in train_samples]
    inner_val = np.array([i for i, s in enumerate(train_samples) if s.digest in inner_val_digests])
    inner_tr = np.setdiff1d(np.arange(len(train_samples)), inner_val)
    specs = [s for s in args.backbones.split(",") if s]
    singles = list(dict.fromkeys(p for s in specs for p in s.split("+")))  # each backbone once, in order
    print(f"train/: {len(train_samples)} photos {np.bincount(y_tr).tolist()} (inner split {len(inner_tr)}/"
          f"{len(inner_val)}); val/: {len(val_samples)} photos {np.bincount(y_va).tolist()}; load avg {load_avg()}")

    with tempfile.TemporaryDirectory() as tmp:
        cache_root = Path(args.cache) if args.cache else Path(tmp) / "cache"
        feats, timing = {}, {}
        for spec in singles:
            la = load_avg()
            x_tr, t_tr, c_tr, m_tr = extract(spec, train_samples, cache_root)
            x_va, t_va, c_va, m_va = extract(spec, val_samples, cache_root)
            feats[spec] = (x_tr, x_va)
            timing[spec] = {"train_s": round(t_tr, 2), "val_s": round(t_va, 2), "train_cpu_s": round(c_tr, 2),
                            "val_cpu_s": round(c_va, 2), "misses": m_tr + m_va, "load_avg_before": la}
            print(f"{spec:12s} extraction train/ {t_tr:6.1f} s ({c_tr:6.1f} CPU-s)  val/ {t_va:6.1f} s "
                  f"({c_va:6.1f} CPU-s)  {m_tr + m_va} computed; load avg {la} before, {os.cpu_count()} cores")
        for spec in specs:
            if "+" in spec:
                parts = spec.split("+")
                feats[spec] = tuple(np.concatenate([feats[p][i] for p in parts], axis=1) for i in (0, 1))
                timing[spec] = {k: round(sum(timing[p][k] for p in parts), 2)
                                for k in ("train_s", "val_s", "train_cpu_s", "val_cpu_s")}

        rows = []
        for spec in specs:
            x_tr, x_va = feats[spec]
            rows += study_backbone(spec, x_tr, y_tr, keys, inner_tr, inner_val, x_va, y_va, classes)
        for spec in [s for s in args.flip.split(",") if s in feats and "+" not in s]:
            x_tr, x_va = feats[spec]
            f_tr, f_va = flipped(spec, train_samples), flipped(spec, val_samples)
            rows += flip_rows(spec, x_tr, f_tr, y_tr, keys, x_va, f_va, y_va, classes)
        print()
        print(f"{'backbone':12s} {'config':12s} {'reported':>8s} {'cv':>14s} {'held-out':>8s} {'bal':>6s} "
              f"{'err':>4s} {'fit s':>6s}  chosen")
        for r in rows:
            rep = f"{r['reported']:.4f}" if r["reported"] is not None else "-"
            cv = f"{r['cv']:.4f}±{r['cv_std']:.4f}" if r["cv"] is not None else "-"
            print(f"{r['backbone']:12s} {r['config']:12s} {rep:>8s} {cv:>14s} {r['accuracy']:8.4f} "
                  f"{r['balanced_accuracy']:6.4f} {r['errors']:4d} {r['fit_s']:6.2f}  {r['chosen']}")

        imb = []
        for spec in [s for s in args.imbalance_backbones.split(",") if s in feats]:
            x_tr, x_va = feats[spec]
            imb += imbalance(spec, x_tr, y_tr, keys, x_va, y_va, classes)
        if imb:
            print("\nimbalance: one class of train/ cut to a quarter; held-out = all of val/")
            print(f"{'backbone':12s} {'train counts':14s} {'balance':8s} {'weighted':8s} {'cv':>7s} {'cv bal':>7s} "
                  f"{'held-out':>8s} {'bal':>6s}  chosen")
            for r in imb:
                print(f"{r['backbone']:12s} {str(r['train_counts']):14s} {r['balance']:8s} {str(r['weighted']):8s} "
                      f"{r['cv']:7.4f} {r['cv_balanced']:7.4f} {r['accuracy']:8.4f} {r['balanced_accuracy']:6.4f}"
                      f"  {r['chosen']}")
        cold = [cold_train(spec, root, tmp) for spec in args.cold_train.split(",") if spec]
        if cold:
            print(f"\ncold `graft train train/ --strategy head` (today's head), fresh process and cache, "
                  f"{os.cpu_count()} cores")
            for r in cold:
                print(f"{r['backbone']:12s} wall {r['cold_wall_s']:6.1f} s  CPU {r['cold_cpu_s']:6.1f} s  "
                      f"reported {r['reported_val_accuracy']:.4f}  held-out {r['held_out']:.4f}  "
                      f"(load avg {r['load_avg_before']} before)")
    print("\nno other real multi-class photo set is available here: the imbalance check reuses ants/bees")
    emit({"rows": rows, "extraction": timing, "imbalance": imb, "cold_train": cold, "load_avg_end": load_avg(),
          "n_train": len(train_samples), "n_val": len(val_samples)})


if __name__ == "__main__":
    main()
