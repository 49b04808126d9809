"""The last step of graft.train: the run folder (model, validation predictions, metrics.json,
report.html), and the one place metrics.json is put together."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from graft._util.atomic import write_json
from graft.run.files import METRICS_JSON, REPORT_HTML
from graft.run.guard import remove_stale
from graft.run.photos import save_val_predictions
from graft.run.store import save_run
from graft.recipe.strategy import StrategyChoice
from graft.recipe.steps import Features, Fitted, Job, accuracy

log = logging.getLogger("graft")


def summary(job: Job, f: Features, choice: StrategyChoice, probe_cv: float, probe: Fitted | None = None) -> dict:
    """What every rank knows once the strategy is chosen (all a follower rank returns).
    `probe_cv_accuracy`: the linear probe's cross-validated accuracy on the training photos (what
    `auto` chose the strategy with)."""
    src = job.source
    counts = {c: {"train": 0, "val": 0} for c in f.data.classes}
    for side, samples in (("train", f.data.train), ("val", f.data.val)):
        for s in samples:
            counts[f.data.classes[s.label]][side] += 1
    return {
        "photos": str(Path(f.data.root).absolute()),  # the folder or label file trained on
        "classes": f.data.classes,
        "class_counts": counts,
        "n_train": len(f.data.train),
        "n_val": len(f.data.val),
        "skipped": f.skipped,
        "strategy": choice.strategy,
        "strategy_reason": choice.reason,
        **({"strategy_evidence": choice.evidence} if choice.evidence is not None else {}),
        "probe_cv_accuracy": probe_cv,
        **({"probe_val_accuracy": accuracy(f, probe.val_logits)["accuracy"]} if probe is not None else {}),
        "backbone": {"spec": src.spec, "arch": src.arch, "weights_digest": src.weights.digest},
        **({"backbone_candidates": job.backbone_candidates} if job.backbone_candidates is not None else {}),
        **({"backbone_weighed": job.backbone_weighed} if job.backbone_weighed is not None else {}),
    }


def write(job: Job, f: Features, common: dict, fitted: Fitted) -> dict:
    """Write the run folder and return its metrics. model.json comes after the tensors (it marks
    a model complete) and metrics.json after the model (it marks the run complete). Exports and
    a calibration of a model this one replaces are removed first: they would not match it."""
    stale = remove_stale(job.out)
    if stale:
        log.warning("removed %s from %s: made from the model this run replaces", ", ".join(stale), job.out)
    record = save_run(job.out, head=fitted.head, classes=f.data.classes, source=job.source, strategy=fitted.strategy,
             backbone=fitted.backbone, cut=fitted.cut,
             training={**fitted.config, "val_split": job.cfg.val_split, "layout": f.data.layout,
                       # what graft calibrate needs to find the photos the model never
                       # trained on: fine-tuning's inner split, and whether val was trained on
                       # ("final": the validation photos were trained on, by --final or the refit)
                       "inner_split": job.cfg.inner_split,
                       "final": job.cfg.final or bool((fitted.trained_on or {}).get("val"))},
             augmentation=fitted.augmentation)
    probs = torch.from_numpy(fitted.val_logits).float().softmax(1).numpy()
    # absolute: the report links each photo, and may be rebuilt from another folder
    save_val_predictions(job.out, [Path(s.path).absolute() for s in f.data.val], f.y_val, probs)
    train_s = time.perf_counter() - fitted.started
    export_s = time.perf_counter()
    export = export_for_predict(job, f, record)
    metrics = build_metrics(job, f, common, fitted, train_s=train_s)
    metrics["timings"]["export_s"] = round(time.perf_counter() - export_s, 4)
    metrics["export"] = export
    write_json(job.out / METRICS_JSON, metrics)
    if job.cfg.report:
        try:
            from graft.report import write_report

            write_report(job.out, data=f.data, cache_dir=job.cache_root, workers=job.cfg.workers)
        except Exception as e:  # a report is a nicety: never fail a finished run over it
            msg = str(e)  # a GraftError of the writer already names the file
            log.warning("%s", msg if msg.startswith("could not write ") else f"could not write {job.out / REPORT_HTML}: {msg}")
    return metrics


def build_metrics(job: Job, f: Features, common: dict, fitted: Fitted, *, train_s: float) -> dict:
    """metrics.json: validation figures, what was trained and how, the cache, and the timings."""
    val = accuracy(f, fitted.val_logits)
    history, stats = fitted.history, job.stats
    sel = fitted.selection or {}
    return {
        # val_*: the validation photos, predicted once at the end and never used to choose anything.
        # cv_*: k-fold cross-validation on the training photos, what chose the head (mean, spread over folds).
        "val_accuracy": None if job.cfg.final else val["accuracy"],
        "val_balanced_accuracy": None if job.cfg.final else val["balanced_accuracy"],
        **({"val_note": "--final: the validation photos were trained on, so no held-out figure exists; "
                        "cv_accuracy is the training photos' own estimate"} if job.cfg.final else {}),
        "cv_accuracy": sel.get("cv_accuracy"),
        "cv_balanced_accuracy": sel.get("cv_balanced_accuracy"),
        "head": {k: sel.get(k) for k in ("solver", "strength", "epochs", "folds", "chosen_by", "class_weight",
                                         "balance")} if sel else None,
        "candidates": sel.get("candidates"),
        "val_loss": history["val_loss"][fitted.best_epoch - 1] if history["val_loss"] else None,
        "per_class": val["per_class"],
        "confusion": val["confusion"],
        **common,
        "best_epoch": fitted.best_epoch,
        "epochs_run": fitted.epochs_run,
        "history": history,
        **({"finetune": fitted.finetune} if fitted.finetune is not None else {}),
        "augmentation": fitted.augmentation,
        "trained_on": fitted.trained_on,  # the photos the written model was fitted on, and why
        "views": sel.get("views"),  # the head's augmented views: asked, extracted, and for auto whether they won
        **({"log": job.epoch_log.files()} if job.epoch_log is not None else {}),
        "cache": {"hits": stats.hits, "misses": stats.misses, "dir": str(job.cache.dir),
                  "forward_batches": stats.forward_batches, "engines": sorted(stats.engines),
                  **decoded_photos(job, f)},
        "timings": {"extract_s": round(stats.seconds, 4), "train_s": round(train_s, 4),
                    "total_s": round(time.perf_counter() - job.started, 4), **fitted.loop_timings},
    }


def decoded_photos(job: Job, f: Features) -> dict:
    """What the photos decoded once (fine-tuning, augmented views) left in the cache: this data
    set's share and the whole folder's, so the summary can say what a run costs on disk."""
    folder = job.decoded_dir
    if folder is None or not folder.is_dir():
        return {}
    from graft.cache.admin import folder_bytes
    from graft.data.decoded import stored_bytes

    files, size = stored_bytes(folder, [s.digest for s in f.data.train + f.data.val])
    if not files:
        return {}
    return {"decoded": {"dir": str(folder), "files": files, "bytes": size, "folder_bytes": folder_bytes(folder)}}


def export_for_predict(job: Job, f: Features, record) -> dict | None:
    """RUN/model.onnx, so that `graft predict` and a Predictor right after training run on
    onnxruntime without torch (about 1 s instead of 10: graft.use.engines). A head run's is joined
    from the backbone graph the feature cache holds (graft.use.compose: 0.2-0.4 s; the graph is
    exported once per backbone if extraction did not need it); other runs are traced
    (graft.use.export). Under MIN_IMAGES_EXPORTED photos, where extraction did not need the graph
    either, no graph is exported or traced for it (10-20 s, more than such a run takes to train).
    -> {"file", "made"}, or None when onnxruntime is missing or it failed (said: predictions then
    run on torch, as before). Never fails the run."""
    import importlib.util

    if not all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime")):
        return None
    from graft.backbones.engine import MIN_IMAGES_EXPORTED
    from graft.run.files import ONNX_MODEL
    from graft.use.compose import backbone_graph, can_compose, write_composed
    from graft.use.export import export_run

    few = len(f.data.train) + len(f.data.val) < MIN_IMAGES_EXPORTED
    try:
        if can_compose(record):
            graph = backbone_graph(job.source, job.cache_root)
            if graph is None and few:
                return None
            if graph is None:
                from graft.backbones.engine import export, onnx_path

                graph = export(job.source.build(), onnx_path(job.source, job.cache_root))
            write_composed(job.out, graph)
            return {"file": ONNX_MODEL, "made": "joined"}
        if few:
            return None
        export_run(job.out, "onnx")
        return {"file": ONNX_MODEL, "made": "traced"}
    except Exception as e:  # a nicety like the report: the run stands, predictions take the torch path
        log.warning("could not write %s for fast predictions (%s); graft predict will use torch",
                    job.out / ONNX_MODEL, str(e).splitlines()[0] if str(e) else type(e).__name__)
        return None
