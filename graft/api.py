"""The one-call API: `train`, `predict`, `evaluate`. The CLI is a thin shell over these.

`train` is the lecture's little-data recipe: scan the photos, resolve the pretrained backbone,
get every image's frozen features from the on-disk cache (computing only what is missing), train
a new softmax on them, evaluate on the validation split and write the run folder.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ._atomic import write_json
from .backbones import resolve_backbone
from .cache import FeatureCache, default_cache_dir
from .data import scan_class_folders, scan_photos
from .data.images import SUPPORTED_EXTENSIONS
from .errors import GraftError, ImageError
from .evaluate import classification_metrics
from .extract import ExtractStats, cache_namespace, extract_features
from .head import HeadConfig, train_head
from .loader import image_loader
from .model import load_run, read_run_meta, run_backbone_source, save_run

log = logging.getLogger("graft")

STRATEGIES = ("head",)


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
    strategy: str = "head",
    val_split: float = 0.2,
    cache_dir=None,
    epochs: int = 100,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    label_smoothing: float = 0.1,
    patience: int = 15,
    batch_size: int = 32,
    seed: int = 0,
    workers: int | None = None,
    augment: str = "standard",
    aug=None,
    aug_views: int = 0,
    progress: bool = True,
) -> TrainResult:
    """Train a classifier on `photos` and write it to the run folder `out`.

    `photos` is `PHOTOS/train/<class>/*` + `PHOTOS/val/<class>/*`, or `PHOTOS/<class>/*` (then a
    content-hash split holds out `val_split` of each class). `backbone` is "default",
    "timm:<name>", "tv:<name>" or a built Backbone; `weights` a local weights file.
    `aug_views=K` adds the cached features of K augmented draws of every training image (preset
    `augment`, overrides `aug`); head training then samples one view per image each epoch.
    """
    t_start = time.perf_counter()
    if strategy not in STRATEGIES:
        raise GraftError(f"unknown strategy {strategy!r}; available: {', '.join(STRATEGIES)}")
    torch.manual_seed(seed)
    data = scan_photos(photos, val_split=val_split)
    source = resolve_backbone(backbone, weights)
    cache = FeatureCache(cache_dir or default_cache_dir(), cache_namespace(source))

    stats = ExtractStats()
    samples = data.train + data.val
    feats, ok, stats = extract_features(
        source.build, [s.digest for s in samples], [s.path for s in samples], cache,
        load=source.preprocessing.load, batch_size=batch_size, workers=workers,
        progress=progress, desc="extracting features", stats=stats,
    )
    skipped = data.skipped + stats.skipped
    for item in skipped:
        log.warning("skipped %s: %s", item["path"], item["reason"])
    n_train = len(data.train)
    train_idx = [i for i in range(n_train) if ok[i]]
    val_idx = [i for i in range(n_train, len(samples)) if ok[i]]
    y = np.array([s.label for s in samples])
    _require_every_class(data.classes, y[train_idx], "training")
    x_train = feats[train_idx]
    aug_info = None
    if aug_views:
        from .augmentation import resolve_augmentation
        from .extract import extract_views

        kept = [data.train[i] for i in train_idx]
        pipeline = resolve_augmentation(augment, aug, size=source.preprocessing.size,
                                        train_samples=kept, cache_dir=cache.dir.parent)
        views = extract_views(source, kept, cache, pipeline, aug_views, seed=seed, batch_size=batch_size,
                              workers=workers, progress=progress, stats=stats)
        x_train = np.concatenate([x_train[:, None], views], axis=1)  # the clean view is one of them
        aug_info = {"preset": augment, "views": aug_views, "key": pipeline.config().key(),
                    "pipeline": pipeline.describe()}

    t_train = time.perf_counter()
    cfg = HeadConfig(epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
                     label_smoothing=label_smoothing, patience=patience, seed=seed)
    fit = train_head(x_train, y[train_idx], feats[val_idx], y[val_idx],
                     len(data.classes), cfg, progress=progress)
    train_s = time.perf_counter() - t_train

    with torch.no_grad():
        logits = fit.head(torch.from_numpy(feats[val_idx]))
    val = classification_metrics(y[val_idx], logits.argmax(1).numpy(), data.classes)
    out = Path(out)
    save_run(out, head=fit.head, classes=data.classes, source=source, strategy=strategy,
             extra={"training": {"head": cfg.to_json(), "val_split": val_split, "layout": data.layout},
                    "augmentation": aug_info})
    metrics = {
        "val_accuracy": val["accuracy"],
        "val_loss": fit.history["val_loss"][fit.best_epoch - 1] if fit.history["val_loss"] else None,
        "per_class": val["per_class"],
        "confusion": val["confusion"],
        "classes": data.classes,
        "n_train": len(train_idx),
        "n_val": len(val_idx),
        "skipped": skipped,
        "strategy": strategy,
        "backbone": {"spec": source.spec, "arch": source.arch, "weights_digest": source.weights.digest},
        "best_epoch": fit.best_epoch,
        "epochs_run": fit.epochs_run,
        "history": fit.history,
        "cache": {"hits": stats.hits, "misses": stats.misses, "dir": str(cache.dir),
                  "forward_batches": stats.forward_batches},
        "augmentation": aug_info,
        "timings": {"extract_s": round(stats.seconds, 4), "train_s": round(train_s, 4),
                    "total_s": round(time.perf_counter() - t_start, 4),
                    "data_wait_s": round(stats.wait_s, 4), "step_s": round(stats.compute_s, 4)},
    }
    write_json(out / "metrics.json", metrics)
    return TrainResult(out, metrics)


def predict(run, paths, *, topk: int = 3, weights=None, batch_size: int = 32,
            workers: int | None = None) -> list[dict]:
    """Top-k classes with probabilities for each image (folders are expanded).

    Each result is {"path", "predictions": [{"class", "probability"}]} or {"path", "error"}.
    """
    model = load_run(run, weights=weights)
    files = expand_paths(paths)
    results: list[dict] = [{"path": str(p)} for p in files]
    pre = model.preprocessing
    k = max(1, min(topk, len(model.classes)))
    with torch.inference_mode():
        for idx, batch, errors in image_loader(files, pre.load, batch_size=batch_size, workers=workers):
            for i, e in errors:
                results[i]["error"] = e.reason
            if batch is None:
                continue
            probs = model(pre.normalize(batch)).softmax(1)
            top = probs.topk(k, dim=1)
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
    classes, samples, skipped = scan_class_folders(photos, classes=meta["classes"])
    names, paths = [s.digest for s in samples], [s.path for s in samples]
    if not meta["backbone"].get("stored"):
        source = run_backbone_source(meta, weights)
        cache = FeatureCache(cache_dir or default_cache_dir(), cache_namespace(source))
        feats, ok, stats = extract_features(source.build, names, paths, cache, load=source.preprocessing.load,
                                            batch_size=batch_size, workers=workers, progress=progress,
                                            desc="features")
        model = load_run(run, weights=weights)
        with torch.no_grad():
            logits = model.head(torch.from_numpy(feats[ok]))
        skipped += stats.skipped
        pred = logits.argmax(1).numpy()
    else:
        results = predict(run, paths, topk=1, weights=weights, batch_size=batch_size, workers=workers)
        ok = np.array(["predictions" in r for r in results])
        skipped += [{"path": r["path"], "reason": r["error"]} for r in results if "error" in r]
        index = {c: i for i, c in enumerate(classes)}
        pred = np.array([index[r["predictions"][0]["class"]] for r in results if "predictions" in r])
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
