"""The steps of graft.train, each one job; graft/recipe/__init__.py runs them in order. Here:
start, scan, fit_head, fit_network and score_val; the feature step (extract) is extraction.py, the
choice of --backbone auto backbone_choice.py, the run folder run_folder.py.

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

from graft.backbones import BackboneSource, resolve_backbone
from graft.cache import FeatureCache, cache_root
from graft.cache.layout import DECODED, HEADS
from graft.cache.rows import FeatureRows
from graft.check import skip_quick_errors
from graft.data import Dataset, scan_photos
from graft.data.placeholders import RefuseNonPhotos
from graft.features.concat import JoinedCache, source_features
from graft.features.extract import ExtractStats
from graft.heads.softmax import predict_logits
from graft.heads.metrics import classification_metrics
from graft.run import CHECKPOINT
from graft.data.folder import inner_split
from graft.recipe.strategy import StrategyChoice
from graft.recipe.augmentation import describe, resolve_augmentation
from graft.recipe.config import AUTO_CANDIDATES, TrainConfig
from graft.recipe.log import TrainingLog

log = logging.getLogger("graft")


@dataclass
class Job:
    cfg: TrainConfig
    out: Path
    dist: object  # graft.finetune.distributed.Context
    source: BackboneSource  # or a concatenation's graft.backbones.concat.ConcatSource: read alike, part by part
    pooled: JoinedCache  # the backbone's pooled features, each part in its own namespace
    progress: bool
    epoch_log: TrainingLog | None = None  # RUN/log.csv and friends (rank 0 only)
    stats: ExtractStats = field(default_factory=ExtractStats)
    started: float = field(default_factory=time.perf_counter)
    _pipelines: dict = field(default_factory=dict)
    backbone_candidates: list | None = None  # --backbone auto: each candidate's cv figures and cost
    backbone_weighed: dict | None = None  # the default backbone: whether others were weighed, and why
    lock: object = None  # the run folder's lock (rank 0, from the scan on; graft.run.guard.lock_run)

    @property
    def cache(self) -> FeatureCache:
        """The first part's pooled features: a single backbone's own, which the head's rows and the
        views are read from; a concatenation's first part's (metrics.json names its folder)."""
        return self.pooled.parts[0]

    @property
    def writes_graph(self) -> bool:
        """Whether this run will export its backbone's graph anyway: a head run's RUN/model.onnx is
        joined from it (graft.recipe.run_folder.export_for_predict), so extraction may as well run
        on onnxruntime from its first photo (graft.backbones.engine.extraction_engine)."""
        import importlib.util

        return (self.cfg.strategy in ("head", "auto") and len(self.source.parts) == 1
                and all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime")))

    @property
    def cache_root(self) -> Path:
        return self.cache.dir.parent

    def choose_head(self, x, y, samples: list, n_classes: int):
        """The head on training features `x` (rows of `samples`, labels `y`) as this run chooses
        it (graft.heads.search.choose_head with the run's solvers, head settings, balance and
        seed), on the cache's heads memo: the same inputs never fit twice, in a run or across."""
        from graft.heads.search import choose_head

        return choose_head(x, y, n_classes, solvers=self.cfg.solvers(), head_cfg=self.cfg.head_config(),
                           balance=self.cfg.balance, keys=[s.digest for s in samples], seed=self.cfg.seed,
                           memo=self.cache_root / HEADS)

    @property
    def decoded_dir(self) -> Path | None:
        return self.cache_root / DECODED if self.cfg.decode_once else None

    def extract(self, samples, cache: JoinedCache, desc: str, forward=None, keep: bool = True):
        """-> (rows of `samples` in `cache`, ok mask), computing what is missing, part by part
        (graft.features.concat.source_features); with `keep=False` a single backbone's rows stay
        in the cache (CachedRows: indexed, graft.cache.rows.FeatureRows to read them)."""
        feats, ok, st = source_features(self.source, samples, cache, batch_size=self.cfg.batch_size,
                                        workers=self.cfg.workers, progress=self.progress, dist=self.dist,
                                        load_for=lambda pre: RefuseNonPhotos(pre.load), desc=desc, forward=forward,
                                        keep=keep, graph_wanted=forward is None and self.writes_graph)
        for part in st.parts.values():
            self.stats.add(part, skipped=False)
        self.stats.skipped += st.skipped  # each unreadable photo once, not once per part
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
    augmented views: the clean one first): arrays below the head's memory budget, else
    graft.cache.rows.FeatureRows whose rows stay in the cache until the head reads them."""

    data: Dataset  # photos that could be read
    x_train: np.ndarray | FeatureRows
    y_train: np.ndarray
    x_val: np.ndarray | FeatureRows
    y_val: np.ndarray
    skipped: list
    augmentation: dict | None = None  # the views' augmentation
    views: dict | None = None  # {"asked": K or "auto", "k": views extracted, "reason"} (views_plan)


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
    selection: dict | None = None  # how the head was chosen on the training photos (HeadChoice.to_json())
    trained_on: dict | None = None  # which photos the written model was fitted on (refit_on_all)


# --- start -------------------------------------------------------------------------------------------

def start(cfg: TrainConfig, out, photos=None) -> Job:
    """The process group, the seed, the run folder checked (graft.run.guard.check_out) and the backbone
    resolved (configuration errors before any scanning; building the network waits until a
    feature is missing)."""
    from graft.finetune.distributed import context
    from graft.run.guard import check_out

    started = time.perf_counter()
    if photos is not None:
        check_out(out, photos)
    dist = context()  # several processes under torchrun, else one
    torch.manual_seed(cfg.seed)
    source = resolve_backbone(AUTO_CANDIDATES[0][0] if cfg.backbone == "auto" else cfg.backbone, cfg.weights)
    pooled = JoinedCache(source.parts, cache_root(cfg.cache_dir))
    epochs_log = TrainingLog(out, cfg.log, resume=cfg.resume) if dist.is_main else None
    return Job(cfg, Path(out), dist, source, pooled, cfg.progress and dist.is_main, epoch_log=epochs_log,
               started=started)


# --- scan --------------------------------------------------------------------------------------------

def scan(job: Job, photos) -> Dataset:
    """The photos, split into train and val by content hash (or PHOTOS/train + PHOTOS/val), less
    what `graft check` would call an error and the scan already shows (a val photo that copies a
    training photo, an absurd aspect ratio): train and check agree on what is unusable. The
    placeholders check finds in the pixels are refused where extraction decodes them."""
    data = scan_photos(photos, val_split=job.cfg.val_split, cache_dir=job.cache_root)
    return skip_quick_errors(data, input_size=job.source.preprocessing.size)


# --- the head --------------------------------------------------------------------------------------

def fit_head(job: Job, f: Features) -> Fitted:
    """The new softmax on the cached features: the head strategy's classifier, and the linear
    probe that `auto` decides with and fine-tuning is measured against.

    Everything about it (solver, L2 strength or number of epochs, class weights) is chosen by
    stratified k-fold cross-validation on the TRAINING photos only (graft.heads.search), and the
    winner is refitted on all of them; the validation photos are predicted once, here, for the
    reported val_accuracy and never used to choose anything."""
    started = time.perf_counter()
    cfg = job.cfg.head_config()

    def choose(x):
        return job.choose_head(x, f.y_train, f.data.train, len(f.data.classes))

    choice = choose(f.x_train)
    views = dict(f.views or {})
    if views.get("asked") == "auto" and views.get("k") and isinstance(f.x_train, np.ndarray):
        # --aug-views auto, past the share (graft.recipe.extraction.weigh_views_on_share): the same
        # folds without the views on every training photo; the views stay only if they win
        plain = choose(f.x_train[:, 0])
        with_views, without = choice.cv[choice.score]["mean"], plain.cv[plain.score]["mean"]
        views.update({"cv_with": with_views, "cv_without": without, "used": bool(with_views > without),
                      "chosen_by": choice.score})
        if not views["used"]:
            choice, f.augmentation = plain, None
    logits = predict_logits(choice.head, f.x_val)
    loop = {"data_wait_s": round(job.stats.wait_s, 4), "step_s": round(job.stats.compute_s, 4)}  # of extraction
    curve = next((r.get("curve") for r in choice.candidates if r.get("solver") == "adamw"), None) or []
    history = {"train_loss": [], "val_loss": [], "val_accuracy": [], "cv_loss": curve}
    if job.epoch_log is not None:  # the head's epochs are its cross-validated AdamW curve
        for epoch, loss in enumerate(curve, 1):
            job.epoch_log.epoch("head", epoch, cv_loss=loss)
        job.epoch_log.flush()  # the head's rows are on disk before fine-tuning starts
    epochs = choice.epochs or 0
    record = {"head": {**cfg.to_json(), "solver": choice.solver, "strength": choice.strength,
                       "epochs": choice.epochs, "class_weight": choice.class_weight}}
    return Fitted("head", choice.head, epochs, epochs, history, record, f.augmentation, loop, started,
                  val_logits=logits, selection={**choice.to_json(), "views": views or None})


def refit_on_all(job: Job, f: Features, fitted: Fitted) -> None:
    """Every photo the user gave trains the model they get: once the validation figure is taken
    from the head fitted on the training photos, the very same choice (solver, strength or
    epochs, class weights, views) is fitted again on training + validation photos, where graft
    drew the validation photos itself (a user's own val/ or val rows stay held out). The figure
    then describes a model trained on fewer photos: conservative, never optimistic. Validation
    photos enter with their clean view only (repeated, so each photo weighs as a training one).
    Fine-tuned models stay as trained (--final trains one on every photo). Sets fitted.trained_on."""
    n_train, n_val = len(f.data.train), len(f.data.val)
    on = {"train": n_train, "val": 0, "figure": "validation photos, predicted once by the model fitted on "
                                                "the training photos"}
    why = ("--final: the validation photos were trained on from the start" if job.cfg.final else
           "no validation photos" if not n_val else
           "the validation photos were given (held out as they are)" if f.data.layout not in ("folders", "labels") else
           f"the {fitted.strategy} strategy's model is kept as fine-tuned on the training photos "
           f"(--final trains one on every photo)" if fitted.strategy != "head" else
           "the features are too large for memory" if not (isinstance(f.x_train, np.ndarray)
                                                           and isinstance(f.x_val, np.ndarray)) else None)
    if why is None:
        from graft.heads.search import refit_choice

        x_val = f.x_val if f.x_train.ndim == 2 else np.repeat(f.x_val[:, None], f.x_train.shape[1], axis=1)
        fitted.head = refit_choice(fitted.selection, np.concatenate([f.x_train, x_val]),
                                   np.concatenate([f.y_train, f.y_val]), len(f.data.classes),
                                   job.cfg.head_config(), memo=job.cache_root / HEADS)
        on["val"] = n_val
    fitted.trained_on = {**on, "photos": on["train"] + on["val"],
                         **({"final": True} if job.cfg.final else {}), **({"why_not_val": why} if why else {})}


def cv_accuracy(fitted: Fitted) -> float:
    """The probe's cross-validated accuracy on the training photos: what `auto` reads (0 when a
    class had a single photo and nothing could be cross-validated)."""
    mean = (fitted.selection or {}).get("cv_accuracy", {}).get("mean")
    return float(mean) if mean is not None else 0.0


def accuracy(f: Features, logits: np.ndarray) -> dict:
    """Validation metrics of `logits` (graft.heads.metrics.classification_metrics)."""
    return classification_metrics(f.y_val, logits.argmax(1), f.data.classes)


# --- the network (when the strategy fine-tunes) -------------------------------------------------------

def fit_network(job: Job, f: Features, choice: StrategyChoice) -> Fitted:
    """Train the last stages (or all) with the new top; see graft.finetune.loop."""
    from graft.finetune.loop import finetune

    cfg = job.cfg.finetune_config(choice)
    preset, pipeline = job.pipeline("finetune", f.data.train)
    built = job.source.build()

    def boundary_activations(samples, k, forward, desc):
        point = f"boundary:{built.stage_names[k - 1]}"
        return job.extract(samples, JoinedCache(job.source.parts, job.cache_root, point), desc, forward=forward)[0]

    started = time.perf_counter()
    # Early stopping and the best epoch are chosen on an inner split of the training photos, never
    # on the validation photos; the model kept is the best inner-split epoch's (trained on the
    # other 1 - inner_split of the training photos: the cheap option, no second fine-tuning).
    inner = inner_split(f.data, job.cfg.inner_split, job.cfg.seed)
    on_epoch = job.epoch_log.on_epoch("finetune", each=True) if job.epoch_log else None
    if cfg.boundary_views and pipeline is not None:  # K augmented views of the frozen stages, cached once
        from graft.finetune.boundary_views import boundary_views, finetune_on_views

        def views_of(samples, k):
            cache = JoinedCache(job.source.parts, job.cache_root, f"boundary:{built.stage_names[k - 1]}").parts[0]
            return boundary_views(built, samples, cache, pipeline, cfg.boundary_views, k, seed=job.cfg.seed,
                                  batch_size=job.cfg.batch_size, workers=job.cfg.workers, progress=job.progress,
                                  stats=job.stats, decoded_dir=job.decoded_dir, dist=job.dist)

        res = finetune_on_views(built, inner, cfg, views_of=views_of, extract=boundary_activations,
                                checkpoint=job.out / CHECKPOINT, workers=job.cfg.workers, resume=job.cfg.resume,
                                progress=job.progress, dist=job.dist, on_epoch=on_epoch)
    else:
        res = finetune(built, inner, cfg, checkpoint=job.out / CHECKPOINT, pipeline=pipeline, workers=job.cfg.workers,
                       resume=job.cfg.resume, progress=job.progress, extract=boundary_activations,
                       boundary_cache=job.cfg.boundary_cache, aug_device=job.cfg.aug_device,
                       decoded_dir=job.decoded_dir, dist=job.dist, on_epoch=on_epoch)
    if res.boundary_cache and job.dist.is_main:
        log.info("frozen stages' activations came from the boundary cache: only the trainable stages ran")
    loop = {k: res.timings[k] for k in ("data_wait_s", "step_s", "val_s")}
    return Fitted(choice.strategy, res.model.head, res.best_epoch, res.epochs_run, res.history,
                  {"finetune": cfg.to_json()}, describe(preset, pipeline) if pipeline is not None else None,
                  loop, started, backbone=res.model.backbone, cut=res.model.cut, model=res.model,
                  finetune={**cfg.to_json(), "boundary_cache": res.boundary_cache,
                            "resumed_from_epoch": res.resumed_from,
                            "early_stopping_on": f"inner split of the training photos ({len(inner.val)} photos, "
                                                 f"{job.cfg.inner_split:g} by content hash)",
                            "trained_on": len(inner.train)})


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
