"""The last step of graft.train: the run folder (model, validation predictions, metrics.json,
report.html), and the one place metrics.json is put together."""

from __future__ import annotations

import logging
import time

import torch

from .._atomic import write_json
from ..run import remove_stale, save_run, save_val_predictions
from ..strategy import StrategyChoice
from .steps import Features, Fitted, Job, accuracy

log = logging.getLogger("graft")


def summary(job: Job, f: Features, choice: StrategyChoice, probe_accuracy: float) -> dict:
    """What every rank knows once the strategy is chosen (all a follower rank returns)."""
    src = job.source
    return {
        "classes": f.data.classes,
        "n_train": len(f.data.train),
        "n_val": len(f.data.val),
        "skipped": f.skipped,
        "strategy": choice.strategy,
        "strategy_reason": choice.reason,
        "probe_val_accuracy": probe_accuracy,
        "backbone": {"spec": src.spec, "arch": src.arch, "weights_digest": src.weights.digest},
    }


def write(job: Job, f: Features, common: dict, fitted: Fitted) -> dict:
    """Write the run folder and return its metrics. model.json comes after the tensors (it marks
    a model complete) and metrics.json after the model (it marks the run complete). Exports and
    a calibration of a model this one replaces are removed first: they would not match it."""
    stale = remove_stale(job.out)
    if stale:
        log.warning("removed %s from %s: made from the model this run replaces", ", ".join(stale), job.out)
    save_run(job.out, head=fitted.head, classes=f.data.classes, source=job.source, strategy=fitted.strategy,
             backbone=fitted.backbone, cut=fitted.cut,
             extra={"training": {**fitted.config, "val_split": job.cfg.val_split, "layout": f.data.layout},
                    "augmentation": fitted.augmentation})
    probs = torch.from_numpy(fitted.val_logits).float().softmax(1).numpy()
    save_val_predictions(job.out, [s.path for s in f.data.val], f.y_val, probs)
    metrics = build_metrics(job, f, common, fitted, train_s=time.perf_counter() - fitted.started)
    write_json(job.out / "metrics.json", metrics)
    if job.cfg.report:
        try:
            from ..report import write_report

            write_report(job.out, data=f.data, cache_dir=job.cache_root, workers=job.cfg.workers)
        except Exception as e:  # a report is a nicety: never fail a finished run over it
            log.warning("could not write %s: %s", job.out / "report.html", e)
    return metrics


def build_metrics(job: Job, f: Features, common: dict, fitted: Fitted, *, train_s: float) -> dict:
    """metrics.json: validation figures, what was trained and how, the cache, and the timings."""
    val = accuracy(f, fitted.val_logits)
    history, stats = fitted.history, job.stats
    return {
        "val_accuracy": val["accuracy"],
        "val_loss": history["val_loss"][fitted.best_epoch - 1] if history["val_loss"] else None,
        "per_class": val["per_class"],
        "confusion": val["confusion"],
        **common,
        "best_epoch": fitted.best_epoch,
        "epochs_run": fitted.epochs_run,
        "history": history,
        **({"finetune": fitted.finetune} if fitted.finetune is not None else {}),
        "augmentation": fitted.augmentation,
        "cache": {"hits": stats.hits, "misses": stats.misses, "dir": str(job.cache.dir),
                  "forward_batches": stats.forward_batches},
        "timings": {"extract_s": round(stats.seconds, 4), "train_s": round(train_s, 4),
                    "total_s": round(time.perf_counter() - job.started, 4), **fitted.loop_timings},
    }
