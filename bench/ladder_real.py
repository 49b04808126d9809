"""The ladder on real sets graft never chose on (issue 23): trashnet (train/ given, test/ held out)
and ants/bees (train/ given, val/ held out). Every row trains on the training folder alone, from a
cold cache of its own, and is scored once on the held-out folder.

Rows: head (no views), head+views (--aug-views 4), partial 1 and 2 stages (today's loop:
augmentation in the workers, the whole network forward every epoch), boundary-view (the last 2
stages over the cached boundary activations of K augmented views, graft.finetune.boundary_views),
lite2, lite0+lite2, and default (`graft train PHOTOS`, nothing else asked). On request
(--only): partial-2-fp32 and boundary-view-fp32, the same in float32 where --precision auto
takes bfloat16 (graft.finetune.precision). Columns: held-out
accuracy (with its binomial standard error), balanced accuracy, the training photos' own estimate
(the head's cross-validated accuracy; a fine-tune's inner-split accuracy at its best epoch), cold
wall time, and for fine-tuning the median seconds an epoch (from its second epoch on).

    .venv/bin/python bench/ladder_real.py [--set trashnet|hymenoptera] [--quick [N]] [--only a,b]
        [--epochs E] [--views K] [--test-per-class M]
    .venv/bin/python bench/ladder_real.py --trial [--quick N] [--budget S]

--quick N trains on a stratified subsample of N photos per class (default 40), and
--test-per-class M scores on at most M held-out photos per class (hash-chosen, the same for every
row): a short run on a loaded machine. Nothing is chosen on the held-out photos.
"""

import argparse
import dataclasses
import hashlib
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HYMENOPTERA, emit  # noqa: E402

import graft  # noqa: E402

TRASHNET = HYMENOPTERA.parent / "trashnet"
SETS = {"trashnet": (TRASHNET, "train", "test"), "hymenoptera": (HYMENOPTERA, "train", "val")}
ROWS = ("head", "head+views", "partial-1", "partial-2", "boundary-view", "lite2", "lite0+lite2", "default")
# not in the table by default: the same fine-tunes in float32 where --precision auto takes bfloat16
FP32_ROWS = ("partial-2-fp32", "boundary-view-fp32")


def rows_settings(epochs: int, views: int) -> dict:
    ft = dict(epochs=epochs, patience=0) if epochs else {}
    return {"head": dict(strategy="head", aug_views=0), "head+views": dict(strategy="head", aug_views=4),
            "partial-1": dict(strategy="partial", train_stages=1, **ft),
            "partial-2": dict(strategy="partial", train_stages=2, **ft),
            "boundary-view": dict(strategy="partial", train_stages=2, boundary_views=views, **ft),
            "lite2": dict(backbone="lite2", strategy="head"), "lite0+lite2": dict(backbone="lite0+lite2"),
            "default": {},
            "partial-2-fp32": dict(strategy="partial", train_stages=2, precision="fp32", **ft),
            "boundary-view-fp32": dict(strategy="partial", train_stages=2, boundary_views=views, precision="fp32", **ft)}


def hashed(paths, n, salt="ladder"):
    return sorted(paths, key=lambda p: hashlib.sha256(f"{salt}:{p.name}".encode()).hexdigest())[:n]


def linked_subset(src: Path, dst: Path, per_class: int | None) -> Path:
    """dst/<class>/* links to at most per_class photos of each class of src (hash-chosen)."""
    for cls in sorted(p for p in src.iterdir() if p.is_dir()):
        files = sorted(f for f in cls.iterdir() if f.is_file())
        (dst / cls.name).mkdir(parents=True)
        for f in hashed(files, per_class or len(files)):
            (dst / cls.name / f.name).symlink_to(f.resolve())
    return dst


def estimate(m: dict):
    """The training photos' own figure: the head's cv accuracy, or a fine-tune's inner-split accuracy."""
    if m.get("finetune"):
        return m["history"]["val_accuracy"][m["best_epoch"] - 1]
    return m.get("probe_cv_accuracy")


def epoch_s(m: dict):
    times = (m.get("history") or {}).get("epoch_s") or []
    return round(statistics.median(times[1:] or times), 2) if m.get("finetune") and times else None


def run_row(name, kw, photos, held_out, tmp: Path) -> dict:
    from graft.recipe.config import TrainConfig

    out, cache = tmp / name, tmp / f"cache-{name}"
    t = time.perf_counter()
    if "boundary_views" in kw and "boundary_views" not in {f.name for f in dataclasses.fields(TrainConfig)}:
        m, scored = boundary_view_unwired(photos, out, cache, kw, held_out)
    else:
        m = graft.train(photos, out, cache_dir=cache, progress=False, **kw).metrics
        scored = None
    wall = time.perf_counter() - t
    if scored is None:
        scored = graft.evaluate(out, held_out, cache_dir=cache)
    acc, n = scored["accuracy"], scored["n"] if "n" in scored else sum(sum(r) for r in scored["confusion"])
    return {"accuracy": round(acc, 4), "se": round(math.sqrt(acc * (1 - acc) / max(n, 1)), 4), "n_test": n,
            "balanced_accuracy": round(scored["balanced_accuracy"], 4),
            "estimate": None if estimate(m) is None else round(estimate(m), 4), "wall_s": round(wall, 1),
            "epoch_s": epoch_s(m), "strategy": m.get("strategy"), "reason": m.get("strategy_reason")}


def boundary_view_unwired(photos, out, cache, kw, held_out):
    """The boundary-view row until graft.train takes boundary_views: the recipe's own steps, then
    graft.finetune.boundary_views.finetune_on_views where fit_network would run finetune."""
    import numpy as np

    from graft.data import scan_class_folders
    from graft.data.folder import inner_split
    from graft.features.concat import JoinedCache
    from graft.finetune.boundary_views import boundary_views, finetune_on_views
    from graft.heads.metrics import classification_metrics
    from graft.recipe.config import TrainConfig
    from graft.recipe.extraction import extract
    from graft.recipe.steps import scan, start
    from graft.recipe.strategy import StrategyChoice

    k_views = kw.pop("boundary_views")
    cfg = TrainConfig(cache_dir=cache, progress=False, aug_views=0, **kw)
    job = start(cfg, out, photos)
    feats = extract(job, scan(job, photos))
    inner = inner_split(feats.data, cfg.inner_split, cfg.seed)
    _, pipeline = job.pipeline("finetune", feats.data.train)
    built = job.source.build()
    ft = dataclasses.replace(cfg.finetune_config(StrategyChoice("partial", cfg.train_stages, "")), boundary_views=k_views)
    k = len(built.stage_names) - cfg.train_stages
    bcache = JoinedCache(job.source.parts, job.cache_root, f"boundary:{built.stage_names[k - 1]}")

    def views_of(samples, k_stages):
        return boundary_views(built, samples, bcache.parts[0], pipeline, k_views, k_stages, seed=cfg.seed,
                              batch_size=cfg.batch_size, workers=cfg.workers, progress=False,
                              decoded_dir=job.decoded_dir)

    res = finetune_on_views(built, inner, ft, views_of=views_of, checkpoint=out / "checkpoint.pt",
                            extract=lambda s, k_, fwd, desc: job.extract(s, bcache, desc, forward=fwd)[0],
                            workers=cfg.workers, progress=False)
    job.epoch_log.close()
    classes, samples, _ = scan_class_folders(held_out, classes=feats.data.classes)
    logits = np.zeros((len(samples), len(classes)), np.float32)
    for idx, f, _ in res.model.batches([s.path for s in samples], batch_size=cfg.batch_size, workers=cfg.workers):
        if f is not None:
            logits[idx] = res.model.head(f).numpy()
    y = np.array([s.label for s in samples])
    m = {"strategy": "partial (boundary views)", "finetune": ft.to_json(), "history": res.history,
         "best_epoch": res.best_epoch}
    return m, {**classification_metrics(y, logits.argmax(1), classes), "n": len(samples)}


def trial_only(photos, tmp: Path, budget, epochs=None, cache=None, per_class=None, views=None) -> dict:
    """--trial: what `--strategy auto` weighs on these training photos (graft.recipe.trial), alone:
    the head and the fine-tuning trial on the same inner photos, the estimate and the verdict."""
    from graft.recipe.config import TrainConfig
    from graft.recipe.extraction import extract
    from graft.recipe.steps import cv_accuracy, fit_head, scan, start
    from graft.recipe.trial import TrialPlan, weigh_finetuning

    t = time.perf_counter()
    job = start(TrainConfig(cache_dir=cache or tmp / "cache-trial", progress=False, aug_views=0), tmp / "trial", photos)
    feats = extract(job, scan(job, photos))
    probe_cv = cv_accuracy(fit_head(job, feats))
    t_trial = time.perf_counter()
    plan = TrialPlan(**{k: v for k, v in (("epochs", epochs), ("per_class", per_class), ("views", views)) if v})
    choice = weigh_finetuning(job, feats, probe_cv, budget=budget, plan=plan)
    job.epoch_log.close()
    return {"strategy": choice.strategy, "reason": choice.reason, "evidence": choice.evidence,
            "probe_cv": round(probe_cv, 4), "trial_wall_s": round(time.perf_counter() - t_trial, 1),
            "wall_s": round(time.perf_counter() - t, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", choices=sorted(SETS), default="trashnet")
    ap.add_argument("--quick", type=int, nargs="?", const=40, default=None, help="training photos per class")
    ap.add_argument("--test-per-class", type=int, default=None)
    ap.add_argument("--only", default=None, help=f"comma-separated subset of {', '.join(ROWS + FP32_ROWS)}")
    ap.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs, no early stopping (default: graft's)")
    ap.add_argument("--views", type=int, default=4, help="boundary-view row: K views of each photo")
    ap.add_argument("--trial", action="store_true", help="only what --strategy auto weighs (graft.recipe.trial)")
    ap.add_argument("--budget", type=float, default=None, help="--trial: the fine-tune's budget in seconds")
    ap.add_argument("--trial-epochs", type=int, default=None, help="--trial: its epochs (default TrialPlan's)")
    ap.add_argument("--trial-per-class", type=int, default=None, help="--trial: its inner-train photos per class")
    ap.add_argument("--trial-views", type=int, default=None, help="--trial: K augmented boundary views a photo")
    ap.add_argument("--cache", type=Path, default=None, help="--trial: a feature cache kept between runs")
    args = ap.parse_args()
    root, train_dir, test_dir = SETS[args.set]
    if not (root / train_dir).is_dir():
        print(f"skipped: {root} is not there")
        emit({"skipped": True, "reason": f"{root / train_dir} missing"})
        return
    names = args.only.split(",") if args.only else list(ROWS)
    settings = rows_settings(args.epochs, args.views)
    table = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photos = linked_subset(root / train_dir, tmp / "train", args.quick)
        held_out = linked_subset(root / test_dir, tmp / "held-out", args.test_per_class)
        if args.trial:
            emit({"set": args.set, "quick": args.quick, "trial": trial_only(photos, tmp, args.budget, args.trial_epochs, args.cache,
                                                                      args.trial_per_class, args.trial_views)})
            return
        for name in names:
            table[name] = run_row(name, dict(settings[name]), photos, held_out, tmp)
            r = table[name]
            print(f"{name:<14} acc {r['accuracy']:.4f} +/-{r['se']:.4f}  balanced {r['balanced_accuracy']:.4f}  "
                  f"estimate {r['estimate']}  {r['wall_s']:7.1f} s  epoch {r['epoch_s']} s", file=sys.stderr)
    best = max(table, key=lambda n: table[n]["accuracy"])
    note = None
    if "default" in table:
        d, b = table["default"], table[best]
        within = b["accuracy"] - d["accuracy"] <= b["se"]
        note = ("default is the best row" if best == "default" else
                f"default {'within' if within else 'NOT within'} one standard error of the best row {best} "
                f"({d['accuracy']:.4f} vs {b['accuracy']:.4f} +/-{b['se']:.4f}) at {d['wall_s']:.0f} s vs {b['wall_s']:.0f} s")
    print(f"\n{'row':<14} {'held-out':>9} {'+/-':>7} {'balanced':>9} {'estimate':>9} {'wall s':>8} {'epoch s':>8}")
    for name, r in table.items():
        est = "-" if r["estimate"] is None else f"{r['estimate']:.4f}"
        print(f"{name:<14} {r['accuracy']:>9.4f} {r['se']:>7.4f} {r['balanced_accuracy']:>9.4f} {est:>9} "
              f"{r['wall_s']:>8.1f} {r['epoch_s'] if r['epoch_s'] is not None else '-':>8}")
    if note:
        print(note)
    emit({"set": args.set, "quick": args.quick, "test_per_class": args.test_per_class, "epochs": args.epochs,
          "views": args.views, "rows": table, "note": note})


if __name__ == "__main__":
    main()
