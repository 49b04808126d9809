"""The steps of graft.train, each one job; graft/train/__init__.py runs them in order.

A `Job` carries what every step shares: the settings, the process group, the backbone (resolved,
not built), the feature cache and its statistics. Steps hand their results on in small records
(`Features`, `Fitted`) rather than through one function's locals.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..backbones import BackboneSource, resolve_backbone
from ..cache import FeatureCache, cache_root
from ..cache.layout import DECODED
from ..check import skip_quick_errors
from ..data import Dataset, scan_photos
from ..data.placeholders import RefuseNonPhotos
from ..errors import GraftError
from ..features import ExtractStats, cache_namespace, extract_features
from ..head import train_head
from ..metrics import classification_metrics
from ..strategy import StrategyChoice
from .augmentation import describe, resolve_augmentation
from .config import TrainConfig
from .log import TrainingLog

log = logging.getLogger("graft")


@dataclass
class Job:
    cfg: TrainConfig
    out: Path
    dist: object  # graft.distributed.Context
    source: BackboneSource
    cache: FeatureCache  # the backbone's pooled features
    progress: bool
    epoch_log: TrainingLog | None = None  # RUN/log.csv and friends (rank 0 only)
    stats: ExtractStats = field(default_factory=ExtractStats)
    started: float = field(default_factory=time.perf_counter)
    _pipelines: dict = field(default_factory=dict)

    @property
    def cache_root(self) -> Path:
        return self.cache.dir.parent

    @property
    def decoded_dir(self) -> Path | None:
        return self.cache_root / DECODED if self.cfg.decode_once else None

    def extract(self, samples, cache: FeatureCache, desc: str, forward=None) -> tuple[np.ndarray, np.ndarray]:
        """-> (rows of `samples` in `cache`, ok mask), computing what is missing."""
        feats, ok, _ = extract_features(
            self.source.build, [s.digest for s in samples], [s.path for s in samples], cache,
            load=RefuseNonPhotos(self.source.preprocessing.load), batch_size=self.cfg.batch_size, workers=self.cfg.workers,
            progress=self.progress, desc=desc, stats=self.stats, forward=forward, dist=self.dist)
        return feats, ok

    def pipeline(self, use: str, train_samples):
        """The augmentation of `use` ("views" or "finetune"): None for the preset `none` when
        fine-tuning; built once per preset, so views and fine-tuning share one pipeline."""
        preset = self.cfg.preset(use)
        if use == "finetune" and preset == "none":
            return preset, None
        if preset not in self._pipelines:
            self._pipelines[preset] = resolve_augmentation(
                preset, self.cfg.aug, size=self.source.preprocessing.size, train_samples=train_samples,
                cache_dir=self.cache_root)
        return preset, self._pipelines[preset]


@dataclass
class Features:
    """The usable photos and their frozen features (`x_train` (N, D), or (N, 1 + K, D) with K
    augmented views: the clean one first)."""

    data: Dataset  # photos that could be read
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    skipped: list
    augmentation: dict | None = None  # the views' augmentation


@dataclass
class Fitted:
    """A trained classifier and its record: what the run folder and metrics.json keep of it."""

    strategy: str
    head: torch.nn.Module
    best_epoch: int
    epochs_run: int
    history: dict
    config: dict  # model.json's training entry: {"head": ...} or {"finetune": ...}
    augmentation: dict | None
    loop_timings: dict  # data_wait_s, step_s (and val_s)
    started: float  # when its training began (train_s counts from here)
    val_logits: np.ndarray | None = None  # (n_val, classes); NaN rows: photos that could not be read
    backbone: torch.nn.Module | None = None  # when it trained: stored whole in the run
    cut: int | None = None
    model: torch.nn.Module | None = None  # the whole Classifier, when it fine-tuned
    finetune: dict | None = None  # metrics.json's "finetune" entry


# --- 0. start ---------------------------------------------------------------------------------------

def start(cfg: TrainConfig, out) -> Job:
    """The process group, the seed, and the backbone resolved (configuration errors before any
    scanning; building the network waits until a feature is missing)."""
    from ..distributed import context

    started = time.perf_counter()
    dist = context()  # several processes under torchrun, else one
    torch.manual_seed(cfg.seed)
    source = resolve_backbone(cfg.backbone, cfg.weights)
    cache = FeatureCache(cache_root(cfg.cache_dir), cache_namespace(source))
    epochs_log = TrainingLog(out, cfg.log, resume=cfg.resume) if dist.is_main else None
    return Job(cfg, Path(out), dist, source, cache, cfg.progress and dist.is_main, epoch_log=epochs_log, started=started)


# --- 1. scan ----------------------------------------------------------------------------------------

def scan(job: Job, photos) -> Dataset:
    """The photos, split into train and val by content hash (or PHOTOS/train + PHOTOS/val), less
    what `graft check` would call an error and the scan already shows (a val photo that copies a
    training photo, an absurd aspect ratio): train and check agree on what is unusable. The
    placeholders check finds in the pixels are refused where extraction decodes them."""
    data = scan_photos(photos, val_split=job.cfg.val_split)
    return skip_quick_errors(data, input_size=job.source.preprocessing.size)


# --- 2. features ------------------------------------------------------------------------------------

def features(job: Job, data: Dataset) -> Features:
    """Every photo's frozen features from the cache (computing only what is missing), and with
    --aug-views those of K augmented draws of each training photo."""
    samples = data.train + data.val
    feats, ok = job.extract(samples, job.cache, "extracting features")
    skipped = data.skipped + job.stats.skipped
    if job.dist.is_main:
        for item in skipped:
            log.warning("skipped %s: %s", item["path"], item["reason"])
    n_train = len(data.train)
    train_idx = [i for i in range(n_train) if ok[i]]
    val_idx = [i for i in range(n_train, len(samples)) if ok[i]]
    y = np.array([s.label for s in samples])
    require_every_class(data.classes, y[train_idx], "training")
    kept = Dataset(data.root, data.classes, [samples[i] for i in train_idx], [samples[i] for i in val_idx],
                   data.skipped, data.layout)
    out = Features(kept, feats[train_idx], y[train_idx], feats[val_idx], y[val_idx], skipped)
    if job.cfg.aug_views:
        out.x_train, out.augmentation = _with_views(job, kept.train, out.x_train)
    return out


def _with_views(job: Job, train, x_train):
    from ..features import extract_views

    k = job.cfg.aug_views
    preset, pipeline = job.pipeline("views", train)
    views = extract_views(job.source, train, job.cache, pipeline, k, seed=job.cfg.seed,
                          batch_size=job.cfg.batch_size, workers=job.cfg.workers, progress=job.progress,
                          stats=job.stats, decoded_dir=job.decoded_dir, dist=job.dist)
    return np.concatenate([x_train[:, None], views], axis=1), describe(preset, pipeline, views=k)


def require_every_class(classes, labels, what) -> None:
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=len(classes))
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        raise GraftError(f"no usable {what} image left for class(es): {', '.join(empty)}")


# --- 3. probe ---------------------------------------------------------------------------------------

def probe(job: Job, f: Features) -> Fitted:
    """The new softmax on the cached features: the head strategy's classifier, and the linear
    probe that `auto` decides with and fine-tuning is measured against."""
    started = time.perf_counter()
    cfg = job.cfg.head_config()
    fit = train_head(f.x_train, f.y_train, f.x_val, f.y_val, len(f.data.classes), cfg, progress=job.progress,
                     on_epoch=job.epoch_log.on_epoch("head") if job.epoch_log else None)
    if job.epoch_log is not None:
        job.epoch_log.flush()  # the head's rows are on disk before fine-tuning starts
    with torch.no_grad():
        logits = fit.head(torch.from_numpy(f.x_val)).numpy()
    loop = {"data_wait_s": round(job.stats.wait_s, 4), "step_s": round(job.stats.compute_s, 4)}  # of extraction
    return Fitted("head", fit.head, fit.best_epoch, fit.epochs_run, fit.history, {"head": cfg.to_json()},
                  f.augmentation, loop, started, val_logits=logits)


def accuracy(f: Features, logits: np.ndarray) -> dict:
    """Validation metrics of `logits` (graft.metrics.classification_metrics)."""
    return classification_metrics(f.y_val, logits.argmax(1), f.data.classes)


# --- 5. fit (when the strategy fine-tunes) ---------------------------------------------------------

def fine_tune(job: Job, f: Features, choice: StrategyChoice) -> Fitted:
    """Train the last stages (or all) with the new top; see graft.finetune."""
    from ..finetune import finetune

    cfg = job.cfg.finetune_config(choice)
    preset, pipeline = job.pipeline("finetune", f.data.train)
    built = job.source.build()

    def boundary_activations(samples, k, forward, desc):
        point = f"boundary:{built.stage_names[k - 1]}"
        return job.extract(samples, FeatureCache(job.cache_root, cache_namespace(job.source, point=point)), desc,
                           forward=forward)[0]

    started = time.perf_counter()
    res = finetune(built, f.data, cfg, run_dir=job.out, pipeline=pipeline, workers=job.cfg.workers,
                   resume=job.cfg.resume, progress=job.progress, extract=boundary_activations,
                   boundary_cache=job.cfg.boundary_cache, aug_device=job.cfg.aug_device,
                   decoded_dir=job.decoded_dir, dist=job.dist,
                   on_epoch=job.epoch_log.on_epoch("finetune", each=True) if job.epoch_log else None)
    if res.boundary_cache and job.dist.is_main:
        log.info("frozen stages' activations came from the boundary cache: only the trainable stages ran")
    loop = {k: res.timings[k] for k in ("data_wait_s", "step_s", "val_s")}
    return Fitted(choice.strategy, res.model.head, res.best_epoch, res.epochs_run, res.history,
                  {"finetune": cfg.to_json()}, describe(preset, pipeline) if pipeline is not None else None,
                  loop, started, backbone=res.model.backbone, cut=res.model.cut, model=res.model,
                  finetune={**cfg.to_json(), "boundary_cache": res.boundary_cache,
                            "resumed_from_epoch": res.resumed_from})


def score_val(job: Job, f: Features, fitted: Fitted) -> np.ndarray:
    """The fine-tuned classifier's logits for the validation photos (NaN rows: unreadable now)."""
    model = fitted.model
    logits = np.full((len(f.data.val), len(f.data.classes)), np.nan, np.float32)
    with torch.inference_mode():
        for idx, feats, _ in model.batches([s.path for s in f.data.val], batch_size=job.cfg.batch_size,
                                           workers=job.cfg.workers):
            if feats is not None:
                logits[idx] = model.head(feats).float().numpy()
    return logits
