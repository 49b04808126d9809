"""The one-call API: `train`, `predict`, `evaluate`. The CLI is a thin shell over these.

`train` is the lecture's little-data recipe: scan the photos, resolve the pretrained backbone,
get every image's frozen features from the on-disk cache (computing only what is missing), train
a new softmax on them, evaluate on the validation split and write the run folder.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ._atomic import write_json
from .backbones import resolve_backbone
from .cache import FeatureCache, default_cache_dir
from .data import scan_class_folders, scan_photos
from .data.images import SUPPORTED_EXTENSIONS
from .errors import GraftError
from .evaluate import classification_metrics
from .extract import ExtractStats, cache_namespace, extract_features
from .feature_rows import FeatureRows, with_views
from .head import HeadConfig, memory_budget, predict_labels, train_head
from .model import load_run, read_run_meta, run_features, save_run

log = logging.getLogger("graft")

@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict

    @property
    def val_accuracy(self) -> float:
        return self.metrics["val_accuracy"]


def train(
    photos,
    out,
    *,
    backbone="default",
    weights=None,
    strategy: str = "auto",
    val_split: float = 0.2,
    cache_dir=None,
    epochs: int | None = None,
    lr: float | None = None,
    weight_decay: float = 1e-2,
    label_smoothing: float = 0.1,
    patience: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    workers: int | None = None,
    augment: str | None = None,
    aug=None,
    aug_views: int = 0,
    train_stages: int = 2,
    new_hidden=(),
    from_scratch: bool = False,
    resume: bool = False,
    boundary_cache: bool = True,
    aug_device: str = "workers",
    decode_once: bool = True,
    report: bool = True,
    progress: bool = True,
) -> TrainResult:
    """Train a classifier on `photos` and write it to the run folder `out`.

    `photos` is `PHOTOS/train/<class>/*` + `PHOTOS/val/<class>/*`, or `PHOTOS/<class>/*` (then a
    content-hash split holds out `val_split` of each class). `backbone` is "default",
    "timm:<name>", "tv:<name>" or a built Backbone; `weights` a local weights file.

    `strategy`: "head" (frozen backbone, new softmax on cached features), "partial" (the last
    `train_stages` stages train too; or, with `new_hidden`, are replaced by new hidden layers),
    "full" (everything trains; `from_scratch` for random initialisation) or "auto" (chosen from
    the data, see graft.strategy). The head on cached features is always trained first: it is
    the linear probe `auto` decides with, and the baseline the others are reported against.

    Head strategy: `aug_views=K` adds the cached features of K augmented draws of every training
    image (preset `augment`, default "light", overrides `aug`), sampled one per image each epoch:
    on hymenoptera light views beat clean features where standard ones only matched them
    (bench/aug_views.py). Fine-tuning (default preset "standard")
    strategies augment on the fly in loader workers (`augment="none"` switches it off, which lets
    the frozen prefix's activations come from the cache; `aug_device="cpu"|"cuda"` runs flips and
    colour ops per sample on the trainer's device instead; `decode_once` keeps decoded photos in
    the cache folder so later epochs skip JPEG decoding). `resume` continues a killed run.
    """
    from .distributed import context
    from .strategy import STRATEGIES, choose_strategy

    t_start = time.perf_counter()
    dist = context()  # several processes under torchrun, else one
    progress = progress and dist.is_main
    if strategy not in STRATEGIES:
        raise GraftError(f"unknown strategy {strategy!r}; available: {', '.join(STRATEGIES)}")
    if from_scratch and strategy != "full":
        raise GraftError("--from-scratch trains every layer from random weights: use it with --strategy full")
    torch.manual_seed(seed)
    source = resolve_backbone(backbone, weights)  # configuration errors first, before any scanning
    cache_root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    data = scan_photos(photos, val_split=val_split, cache_dir=cache_root)
    if dist.is_main:
        _warn_leakage(data)
    cache = FeatureCache(cache_root, cache_namespace(source))
    out = Path(out)

    stats = ExtractStats()
    samples = data.train + data.val
    _, ok, stats = extract_features(
        source.build, [s.digest for s in samples], [s.path for s in samples], cache,
        load=source.preprocessing.load, batch_size=batch_size, workers=workers,
        progress=progress, desc="extracting features", stats=stats, dist=dist, keep=False,
    )
    skipped = data.skipped + stats.skipped
    if dist.is_main:
        for item in skipped:
            log.warning("skipped %s: %s", item["path"], item["reason"])
    n_train = len(data.train)
    train_idx = [i for i in range(n_train) if ok[i]]
    val_idx = [i for i in range(n_train, len(samples)) if ok[i]]
    y = np.array([s.label for s in samples])
    _require_every_class(data.classes, y[train_idx], "training")
    kept = replace(data, train=[data.train[i] for i in train_idx],
                   val=[samples[i] for i in val_idx])

    # --- the new softmax on cached features: the head strategy, and everyone's baseline ----------
    # rows stay in the cache until the head reads them (in memory below the budget, as always)
    x_train = FeatureRows(cache, [samples[i].digest for i in train_idx])
    x_val = FeatureRows(cache, [samples[i].digest for i in val_idx])
    aug_info = None
    if aug_views:
        from .augmentation import resolve_augmentation
        from .extract import extract_views

        pipeline = resolve_augmentation(augment or "light", aug, size=source.preprocessing.size,
                                        train_samples=kept.train, cache_dir=cache_root)
        views = extract_views(source, kept.train, cache, pipeline, aug_views, seed=seed, batch_size=batch_size,
                              workers=workers, progress=progress, stats=stats,
                              decoded_dir=cache_root / "decoded" if decode_once else None, dist=dist,
                              keep=False)
        x_train = with_views(x_train, views, cache)  # the clean view is one of them
        aug_info = {"preset": augment or "light", "views": aug_views, "key": pipeline.config().key(),
                    "pipeline": pipeline.describe()}
    if strategy == "head" and not dist.is_main:  # features are shared; the head trains once, on rank 0
        return TrainResult(out, {"rank": dist.rank, "strategy": "head", "cache": {"misses": stats.misses}})
    t_train = time.perf_counter()
    head_cfg = HeadConfig(epochs=epochs or 100, lr=lr or 1e-3, weight_decay=weight_decay, batch_size=batch_size,
                          label_smoothing=label_smoothing, patience=15 if patience is None else patience,
                          seed=seed)
    if x_train.nbytes + x_val.nbytes <= memory_budget():
        x_train, x_val = np.asarray(x_train), np.asarray(x_val)
    fit = train_head(x_train, y[train_idx], x_val, y[val_idx], len(data.classes), head_cfg,
                     progress=progress)
    probe_pred = predict_labels(fit.head, x_val)
    probe = classification_metrics(y[val_idx], probe_pred, data.classes)
    choice = choose_strategy(strategy, kept, probe["accuracy"], train_stages=train_stages)

    common = {
        "classes": data.classes,
        "n_train": len(train_idx),
        "n_val": len(val_idx),
        "skipped": skipped,
        "strategy": choice.strategy,
        "strategy_reason": choice.reason,
        "probe_val_accuracy": probe["accuracy"],
        "backbone": {"spec": source.spec, "arch": source.arch, "weights_digest": source.weights.digest},
    }
    if choice.strategy == "head":
        train_s = time.perf_counter() - t_train
        if not dist.is_main:
            return TrainResult(out, {"rank": dist.rank, **common})
        save_run(out, head=fit.head, classes=data.classes, source=source, strategy="head",
                 extra={"training": {"head": head_cfg.to_json(), "val_split": val_split, "layout": data.layout},
                        "augmentation": aug_info})
        val = probe
        metrics = {
            "val_accuracy": val["accuracy"],
            "val_loss": fit.history["val_loss"][fit.best_epoch - 1] if fit.history["val_loss"] else None,
            "per_class": val["per_class"], "confusion": val["confusion"], **common,
            "best_epoch": fit.best_epoch, "epochs_run": fit.epochs_run, "history": fit.history,
            "augmentation": aug_info,
        }
        loop_timings = {"data_wait_s": round(stats.wait_s, 4), "step_s": round(stats.compute_s, 4)}
    else:
        from .finetune import FinetuneConfig, finetune

        ft_cfg = FinetuneConfig(strategy=choice.strategy, train_stages=choice.train_stages,
                                new_hidden=tuple(new_hidden or ()), from_scratch=from_scratch,
                                epochs=epochs or 15, batch_size=batch_size, lr=lr or 1e-3,
                                weight_decay=weight_decay, label_smoothing=label_smoothing,
                                patience=5 if patience is None else patience, seed=seed)
        pipeline = None
        augment = augment or "standard"
        if augment != "none":
            from .augmentation import resolve_augmentation

            pipeline = resolve_augmentation(augment, aug, size=source.preprocessing.size,
                                            train_samples=kept.train, cache_dir=cache_root)
        built = source.build()

        def extract_boundary(subset, forward, desc):
            k = len(built.stage_names) - ft_cfg.train_stages
            bcache = FeatureCache(cache_root, cache_namespace(source, point=f"boundary:{built.stage_names[k - 1]}"))
            arr, _, _ = extract_features(source.build, [s.digest for s in subset], [s.path for s in subset], bcache,
                                         load=source.preprocessing.load, batch_size=batch_size, workers=workers,
                                         progress=progress, desc=desc, stats=stats, forward=forward, dist=dist)
            return arr

        t_train = time.perf_counter()
        res = finetune(built, kept, ft_cfg, run_dir=out, pipeline=pipeline, workers=workers,
                       resume=resume, progress=progress, extract=extract_boundary,
                       boundary_cache=boundary_cache, aug_device=aug_device,
                       decoded_dir=cache_root / "decoded" if decode_once else None, dist=dist)
        model = res.model
        if not dist.is_main:  # rank 0 evaluates and writes; the weights are the same on every rank
            return TrainResult(out, {"rank": dist.rank, **common, "history": res.history})
        with torch.inference_mode():
            pred = _predict_labels(model, kept.val, batch_size, workers)
        val = classification_metrics(y[val_idx], pred, data.classes)
        aug_info = {"preset": augment, "pipeline": pipeline.describe()} if pipeline is not None else None
        save_run(out, head=model.head, classes=data.classes, source=source, strategy=choice.strategy,
                 backbone=model.backbone, cut=model.cut,
                 extra={"training": {"finetune": ft_cfg.to_json(), "val_split": val_split, "layout": data.layout},
                        "augmentation": aug_info})
        if res.boundary_cache:
            log.info("frozen stages' activations came from the boundary cache: only the trainable stages ran")
        metrics = {
            "val_accuracy": val["accuracy"],
            "val_loss": res.history["val_loss"][res.best_epoch - 1] if res.history["val_loss"] else None,
            "per_class": val["per_class"], "confusion": val["confusion"], **common,
            "best_epoch": res.best_epoch, "epochs_run": res.epochs_run, "history": res.history,
            "finetune": {**ft_cfg.to_json(), "boundary_cache": res.boundary_cache,
                         "resumed_from_epoch": res.resumed_from},
            "augmentation": aug_info,
        }
        loop_timings = {"data_wait_s": res.timings["data_wait_s"], "step_s": res.timings["step_s"],
                        "val_s": res.timings["val_s"]}
    train_s = time.perf_counter() - t_train
    metrics["cache"] = {"hits": stats.hits, "misses": stats.misses, "dir": str(cache.dir),
                        "forward_batches": stats.forward_batches}
    metrics["timings"] = {"extract_s": round(stats.seconds, 4), "train_s": round(train_s, 4),
                          "total_s": round(time.perf_counter() - t_start, 4), **loop_timings}
    write_json(out / "metrics.json", metrics)
    if report:
        try:
            from .report import write_report

            write_report(out, photos=photos, cache_dir=cache_root, workers=workers)
        except Exception as e:  # a report is a nicety: never fail a finished run over it
            log.warning("could not write %s: %s", out / "report.html", e)
    return TrainResult(out, metrics)


def _warn_leakage(data) -> None:
    """The cheap part of `graft check`, free given the content hashes: the same photo on both
    sides of the split inflates validation figures (the hash split never does this; a
    train/ + val/ layout can)."""
    in_train = {s.digest: s.path for s in data.train}
    for s in data.val:
        if s.digest in in_train:
            log.warning("leakage: %s is the same photo as %s (train); validation figures will flatter the model; "
                        "run `graft check` for near-duplicates too", s.path, in_train[s.digest])


def _predict_labels(model, samples, batch_size, workers) -> np.ndarray:
    out = np.zeros(len(samples), dtype=int)
    for idx, feats, _ in model.batches([s.path for s in samples], batch_size=batch_size, workers=workers):
        if feats is not None:
            out[idx] = model.head(feats).argmax(1).numpy()
    return out


def predict(run, paths, *, topk: int = 3, weights=None, batch_size: int = 32,
            workers: int | None = None) -> list[dict]:
    """Top-k classes with probabilities for each image (folders are expanded).

    Each result is {"path", "predictions": [{"class", "probability"}]} or {"path", "error"}.
    """
    model = load_run(run, weights=weights)
    files = expand_paths(paths)
    results: list[dict] = [{"path": str(p)} for p in files]
    k = max(1, min(topk, len(model.classes)))
    with torch.inference_mode():
        for idx, feats, errors in model.batches(files, batch_size=batch_size, workers=workers):
            for i, e in errors:
                results[i]["error"] = e.reason
            if feats is None:
                continue
            top = model.head(feats).softmax(1).topk(k, dim=1)
            for row, i in enumerate(idx):
                results[i]["predictions"] = [
                    {"class": model.classes[c], "probability": round(float(p), 6)}
                    for p, c in zip(top.values[row], top.indices[row])
                ]
    return results


def evaluate(run, photos, *, cache_dir=None, weights=None, batch_size: int = 32,
             workers: int | None = None, progress: bool = False) -> dict:
    """Accuracy, per-class figures and confusion matrix of a run on labelled photos.

    `photos` is `<dir>/<class>/*` with the run's classes (or a folder whose `val/` is that).
    Frozen-backbone runs reuse the feature cache, so evaluating on the validation photos after
    training makes no forward pass through the backbone.
    """
    photos = Path(photos)
    if (photos / "val").is_dir() and (photos / "train").is_dir():
        photos = photos / "val"
    meta = read_run_meta(run)
    classes, samples, skipped = scan_class_folders(photos, classes=meta["classes"], cache_dir=cache_dir)
    feats, ok, head, more = run_features(run, samples, cache_dir=cache_dir, weights=weights, batch_size=batch_size,
                                         workers=workers, progress=progress)
    skipped += more
    with torch.no_grad():
        pred = head(torch.from_numpy(feats[ok])).argmax(1).numpy()
    for item in skipped:
        log.warning("skipped %s: %s", item["path"], item["reason"])
    y = np.array([s.label for s in samples])[ok]
    metrics = classification_metrics(y, pred, classes)
    metrics["skipped"] = skipped
    return metrics


def augment_preview(photos, out, *, preset: str = "standard", aug=None, n_photos: int = 3,
                    n_draws: int = 6, size: int = 224, seed: int = 0) -> Path:
    """One picture: a few photos raw and under `n_draws` draws of the pipeline, one row per op."""
    from .augment import preview_grid
    from .augmentation import resolve_augmentation
    from .data.images import read_image

    data = scan_photos(photos)
    picked, seen = [], set()
    for s in sorted(data.train, key=lambda s: s.digest):  # spread over classes, stable choice
        if s.label not in seen or len(seen) == len(data.classes):
            picked.append(s)
            seen.add(s.label)
        if len(picked) == n_photos:
            break
    pipeline = resolve_augmentation(preset, aug, size=size, train_samples=data.train,
                                    cache_dir=default_cache_dir())
    images = [read_image(s.path, min_short_side=2 * size) for s in picked]
    return preview_grid(images, pipeline, out, n_draws=n_draws, seed=seed)


def expand_paths(paths) -> list[Path]:
    """Files as given; folders become the supported images inside them (recursively, sorted)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for p in paths:
        text = str(p)
        if "://" in text:
            raise GraftError(f"{text} looks like a URL; graft reads local files only: download it first")
        p = Path(p).expanduser()
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in SUPPORTED_EXTENSIONS
                            and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.exists():
            files.append(p)
        else:
            raise GraftError(f"no such file or folder: {p}")
    return files


def _require_every_class(classes, labels, what):
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=len(classes))
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        raise GraftError(f"no usable {what} image left for class(es): {', '.join(empty)}")
