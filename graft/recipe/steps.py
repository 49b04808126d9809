"""The steps of graft.train, each one job; graft/recipe/__init__.py runs them in order.

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
from graft.backbones.concat import is_concat
from graft.cache import FeatureCache, cache_root
from graft.cache.layout import DECODED
from graft.cache.rows import FeatureRows, with_views
from graft.check import skip_quick_errors
from graft.data import Dataset, scan_photos
from graft.data.placeholders import RefuseNonPhotos
from graft.errors import GraftError
from graft.features.extract import ExtractStats, cache_namespace, extract_features
from graft.heads.softmax import memory_budget, predict_logits
from graft.heads.metrics import classification_metrics
from graft.run.store import inner_split
from graft.recipe.strategy import StrategyChoice
from graft.recipe.augmentation import describe, resolve_augmentation
from graft.recipe.config import TrainConfig
from graft.recipe.log import TrainingLog

log = logging.getLogger("graft")


@dataclass
class Job:
    cfg: TrainConfig
    out: Path
    dist: object  # graft.finetune.distributed.Context
    source: BackboneSource
    cache: FeatureCache  # the backbone's pooled features
    progress: bool
    epoch_log: TrainingLog | None = None  # RUN/log.csv and friends (rank 0 only)
    stats: ExtractStats = field(default_factory=ExtractStats)
    started: float = field(default_factory=time.perf_counter)
    _pipelines: dict = field(default_factory=dict)
    backbone_candidates: list | None = None  # --backbone auto: each candidate's cv figures and cost

    @property
    def cache_root(self) -> Path:
        return self.cache.dir.parent

    @property
    def decoded_dir(self) -> Path | None:
        return self.cache_root / DECODED if self.cfg.decode_once else None

    @property
    def concat(self) -> bool:
        """The backbone concatenates several (`lite0+lite2`): its features are its parts'."""
        return is_concat(self.source.spec)

    def extract(self, samples, cache: FeatureCache, desc: str, forward=None,
                keep: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
        """-> (rows of `samples` in `cache`, ok mask), computing what is missing; with
        `keep=False` the rows stay in the cache (None) for graft.cache.rows to read. A
        concatenation's rows are its parts', each from its own namespace, joined in memory."""
        if self.concat:
            from graft.features.concat import concat_features

            feats, ok, st = concat_features(self.source, samples, self.cache_root, batch_size=self.cfg.batch_size,
                                            workers=self.cfg.workers, progress=self.progress, dist=self.dist,
                                            load_for=lambda pre: RefuseNonPhotos(pre.load), desc=desc)
            for part in st.parts.values():
                self.stats.add(part, skipped=False)
            self.stats.skipped += st.skipped  # each unreadable photo once, not once per part
            return feats, ok
        feats, ok, _ = extract_features(
            self.source.build, [s.digest for s in samples], [s.path for s in samples], cache,
            load=RefuseNonPhotos(self.source.preprocessing.load), batch_size=self.cfg.batch_size, workers=self.cfg.workers,
            progress=self.progress, desc=desc, stats=self.stats, forward=forward, dist=self.dist, keep=keep)
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


# --- 0. start ---------------------------------------------------------------------------------------

def start(cfg: TrainConfig, out, photos=None) -> Job:
    """The process group, the seed, the run folder checked (graft.run.store.check_out) and the backbone
    resolved (configuration errors before any scanning; building the network waits until a
    feature is missing)."""
    from graft.finetune.distributed import context
    from graft.run.store import check_out

    started = time.perf_counter()
    if photos is not None:
        check_out(out, photos)
    dist = context()  # several processes under torchrun, else one
    torch.manual_seed(cfg.seed)
    source = resolve_backbone(AUTO_CANDIDATES[0][0] if cfg.backbone == "auto" else cfg.backbone, cfg.weights)
    cache = pooled_cache(cache_root(cfg.cache_dir), source)
    epochs_log = TrainingLog(out, cfg.log, resume=cfg.resume) if dist.is_main else None
    return Job(cfg, Path(out), dist, source, cache, cfg.progress and dist.is_main, epoch_log=epochs_log, started=started)


def pooled_cache(root, source) -> FeatureCache:
    """The namespace of `source`'s pooled features (a concatenation's first part's: its rows are
    read part by part, graft.features.concat, and this one only anchors the cache's root)."""
    return FeatureCache(root, cache_namespace(source.parts[0] if is_concat(source.spec) else source))


# --- 1. scan ----------------------------------------------------------------------------------------

def scan(job: Job, photos) -> Dataset:
    """The photos, split into train and val by content hash (or PHOTOS/train + PHOTOS/val), less
    what `graft check` would call an error and the scan already shows (a val photo that copies a
    training photo, an absurd aspect ratio): train and check agree on what is unusable. The
    placeholders check finds in the pixels are refused where extraction decodes them."""
    data = scan_photos(photos, val_split=job.cfg.val_split, cache_dir=job.cache_root)
    return skip_quick_errors(data, input_size=job.source.preprocessing.size)


# --- 1b. backbone (--backbone auto) -------------------------------------------------------------------

# The bundled candidates and their extraction cost relative to lite0 (hymenoptera, cold CPU-seconds:
# lite0 19.9, lite1 23.3, lite2 25.5; bench/quality_study.py), cheapest first: ties go to the cheaper.
# Concatenations of those that were extracted are weighed too (their cost is the sum of the parts':
# each photo goes through every part at predict time); their features are already in the cache.
AUTO_CANDIDATES = (("lite0", 1.0), ("lite1", 1.2), ("lite2", 1.35))


def concat_allowed(cfg: TrainConfig, data: Dataset) -> bool:
    """Whether --backbone auto may choose a concatenation: only for a run that would train the head
    alone anyway (a concatenation cannot fine-tune) and takes no fixed number of views."""
    from graft.recipe.strategy import head_only, smallest_class

    trained_on = data.train + data.val if cfg.final else data.train  # what choose_strategy will count
    return head_only(cfg.strategy, smallest_class(trained_on, len(data.classes))) and cfg.aug_views in ("auto", 0)


def choose_backbone(job: Job, data: Dataset) -> Job:
    """--backbone auto: each bundled backbone whose extraction of the training photos fits in
    --budget seconds (estimated from lite0's measured rate x its relative cost) is cross-validated
    on the TRAINING photos' cached features (graft.heads.search.choose_head), then, where the run
    can use one (concat_allowed), every concatenation of two or more of those (`lite0+lite2`:
    their features side by side, nothing more to extract); the best mean cv accuracy wins, ties
    to the cheaper. The winner's features are then in the cache."""
    from itertools import combinations

    from graft.heads.search import choose_head

    cfg = job.cfg
    table, spent, rate, extracted = [], 0.0, None, {}
    y = np.array([s.label for s in data.train])

    def cross_validate(spec, feats, ok, **row):
        rows = np.flatnonzero(ok)
        choice = choose_head(feats[rows], y[rows], len(data.classes), solvers=cfg.solvers(),
                             head_cfg=cfg.head_config(), balance=cfg.balance,
                             keys=[data.train[i].digest for i in rows], seed=cfg.seed)
        cv = choice.to_json()
        table.append({"backbone": spec, "cv_accuracy": cv["cv_accuracy"]["mean"],
                      "cv_accuracy_std": cv["cv_accuracy"]["std"], **row})

    for spec, factor in AUTO_CANDIDATES:
        source = resolve_backbone(spec)
        cache = FeatureCache(job.cache_root, cache_namespace(source))
        estimate = None if rate is None else rate * factor * len(data.train)
        if estimate is not None and spent + estimate > cfg.budget:
            table.append({"backbone": spec, "skipped": f"estimated {estimate:.0f} s of extraction would pass "
                                                       f"--budget {cfg.budget:g} s ({spent:.0f} s spent)"})
            continue
        stats = ExtractStats()
        feats, ok, _ = extract_features(
            source.build, [s.digest for s in data.train], [s.path for s in data.train], cache,
            load=RefuseNonPhotos(source.preprocessing.load), batch_size=cfg.batch_size, workers=cfg.workers,
            progress=job.progress, desc=f"extracting {spec}", stats=stats, dist=job.dist)
        spent += stats.seconds
        if rate is None:  # lite0's seconds per photo, measured (a warm cache costs nothing: no estimate)
            rate = stats.seconds / max(stats.misses, 1) / factor if stats.misses else 0.0
        extracted[spec] = (feats, ok, factor, stats.seconds)
        cross_validate(spec, feats, ok, extraction_s=round(stats.seconds, 3), computed=stats.misses,
                       relative_cost=factor)
    for n in range(2, len(extracted) + 1) if concat_allowed(cfg, data) else ():
        for specs in combinations(extracted, n):
            parts = [extracted[spec] for spec in specs]
            cross_validate("+".join(specs), np.concatenate([p[0] for p in parts], axis=1),
                           np.logical_and.reduce([p[1] for p in parts]),
                           extraction_s=round(sum(p[3] for p in parts), 3), computed=0,
                           relative_cost=round(sum(p[2] for p in parts), 3))
    scored = [r for r in table if r.get("cv_accuracy") is not None]
    if not scored:
        raise GraftError("--backbone auto: no candidate could be cross-validated (too few training photos per class)")
    best = max(scored, key=lambda r: (r["cv_accuracy"], -r["relative_cost"]))
    for r in table:
        r["chosen"] = r is best
    job.source = resolve_backbone(best["backbone"])
    job.cache = pooled_cache(job.cache_root, job.source)
    job.backbone_candidates = table
    return job


# --- 2. features ------------------------------------------------------------------------------------

def features(job: Job, data: Dataset) -> Features:
    """Every photo's frozen features from the cache (computing only what is missing), and with
    --aug-views those of K augmented draws of each training photo."""
    samples = data.train + data.val
    rows, ok = job.extract(samples, job.cache, "extracting features", keep=False)  # rows: a concatenation's
    skipped = data.skipped + job.stats.skipped
    if job.dist.is_main:
        for item in skipped:
            log.warning("skipped %s: %s", item["path"], item["reason"])
    n_train = len(data.train)
    train_idx = [i for i in range(n_train) if ok[i]]
    val_idx = [i for i in range(n_train, len(samples)) if ok[i]]
    y = np.array([s.label for s in samples])
    require_every_class(data.classes, y[train_idx], "training")
    if job.cfg.final:  # a deployment model: the validation photos are trained on too
        train_idx, val_idx = train_idx + val_idx, []
    kept = Dataset(data.root, data.classes, [samples[i] for i in train_idx], [samples[i] for i in val_idx],
                   data.skipped, data.layout)
    if rows is not None:  # joined from its parts' namespaces, in memory
        x_train, x_val = rows[train_idx], rows[val_idx]
    else:
        x_train = FeatureRows(job.cache, [samples[i].digest for i in train_idx])
        x_val = FeatureRows(job.cache, [samples[i].digest for i in val_idx])
    out = Features(kept, x_train, y[train_idx], x_val, y[val_idx], skipped)
    k, why = views_plan(job, kept, out.x_train.nbytes + out.x_val.nbytes)
    out.views = {"asked": job.cfg.aug_views, "k": k, "reason": why}
    given = "--aug" if job.cfg.aug else "--augment" if job.cfg.augment not in (None, "none") else None
    if not k and given and job.cfg.strategy == "head" and job.dist.is_main:
        log.warning("%s is unused: no augmented views were weighed (%s)", given, why)
    if k:
        out.x_train, out.augmentation = _with_views(job, kept.train, out.x_train, k)
    if out.x_train.nbytes + out.x_val.nbytes <= memory_budget():  # in memory, as always
        out.x_train, out.x_val = np.asarray(out.x_train), np.asarray(out.x_val)
        if not len(out.x_val):  # no validation photo: (0, D), as the head expects
            out.x_val = np.zeros((0, out.x_train.shape[-1]), np.float32)
    return out


def views_plan(job: Job, data: Dataset, feature_bytes: int) -> tuple[int, str]:
    """How many augmented views of each training photo to extract for the head, and why: K as
    asked, or for --aug-views auto AUTO_VIEWS where cross-validation can weigh them (see
    graft.recipe.config) and, with the clean ones (`feature_bytes`), they fit the head's memory
    budget, else 0."""
    from graft.recipe.strategy import head_only, smallest_class
    from graft.recipe.config import AUTO_VIEWS, AUTO_VIEWS_MAX_PHOTOS, AUTO_VIEWS_MIN_PER_CLASS

    asked = job.cfg.aug_views
    if job.concat:  # (TrainConfig refuses --aug-views K with one; auto never chooses one then)
        return 0, "a concatenation of backbones takes no augmented views"
    if asked != "auto":
        return asked, f"--aug-views {asked}"
    per_class = smallest_class(data.train, len(data.classes))
    if not head_only(job.cfg.strategy, per_class):
        return 0, "the strategy may fine-tune, which augments its own batches"
    if per_class < AUTO_VIEWS_MIN_PER_CLASS:
        return 0, (f"{per_class} training photos in the smallest class (< {AUTO_VIEWS_MIN_PER_CLASS}): "
                   f"too few for cross-validation to tell whether views help")
    if len(data.train) > AUTO_VIEWS_MAX_PHOTOS:
        return 0, (f"{len(data.train)} training photos (> {AUTO_VIEWS_MAX_PHOTOS}): views would cost "
                   f"{AUTO_VIEWS} forward passes each; ask for them with --aug-views K")
    if feature_bytes * (1 + AUTO_VIEWS) > memory_budget():  # weighing them needs them in memory
        return 0, "the features with views would pass the head's memory budget: ask for them with --aug-views K"
    return AUTO_VIEWS, f"auto: {AUTO_VIEWS} views, kept only if they cross-validate better"


def _with_views(job: Job, train, x_train, k: int):
    from graft.features.extract import extract_views

    preset, pipeline = job.pipeline("views", train)
    views = extract_views(job.source, train, job.cache, pipeline, k, seed=job.cfg.seed,
                          batch_size=job.cfg.batch_size, workers=job.cfg.workers, progress=job.progress,
                          stats=job.stats, decoded_dir=job.decoded_dir, dist=job.dist, keep=False)
    return with_views(x_train, views, job.cache), describe(preset, pipeline, views=k)


def require_every_class(classes, labels, what) -> None:
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=len(classes))
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        raise GraftError(f"no usable {what} image left for class(es): {', '.join(empty)}")


# --- 3. probe ---------------------------------------------------------------------------------------

def probe(job: Job, f: Features) -> Fitted:
    """The new softmax on the cached features: the head strategy's classifier, and the linear
    probe that `auto` decides with and fine-tuning is measured against.

    Everything about it (solver, L2 strength or number of epochs, class weights) is chosen by
    stratified k-fold cross-validation on the TRAINING photos only (graft.heads.search), and the
    winner is refitted on all of them; the validation photos are predicted once, here, for the
    reported val_accuracy and never used to choose anything."""
    from graft.heads.search import choose_head

    started = time.perf_counter()
    cfg = job.cfg.head_config()

    def choose(x):
        return choose_head(x, f.y_train, len(f.data.classes), solvers=job.cfg.solvers(), head_cfg=cfg,
                           balance=job.cfg.balance, keys=[s.digest for s in f.data.train], seed=job.cfg.seed)

    choice = choose(f.x_train)
    views = dict(f.views or {})
    if views.get("asked") == "auto" and views.get("k") and isinstance(f.x_train, np.ndarray):
        # --aug-views auto: the same folds without the views; the views stay only if they win
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


def cv_accuracy(fitted: Fitted) -> float:
    """The probe's cross-validated accuracy on the training photos: what `auto` reads (0 when a
    class had a single photo and nothing could be cross-validated)."""
    mean = (fitted.selection or {}).get("cv_accuracy", {}).get("mean")
    return float(mean) if mean is not None else 0.0


def accuracy(f: Features, logits: np.ndarray) -> dict:
    """Validation metrics of `logits` (graft.heads.metrics.classification_metrics)."""
    return classification_metrics(f.y_val, logits.argmax(1), f.data.classes)


# --- 5. fit (when the strategy fine-tunes) ---------------------------------------------------------

def fine_tune(job: Job, f: Features, choice: StrategyChoice) -> Fitted:
    """Train the last stages (or all) with the new top; see graft.finetune.loop."""
    from graft.finetune.loop import finetune

    cfg = job.cfg.finetune_config(choice)
    preset, pipeline = job.pipeline("finetune", f.data.train)
    built = job.source.build()

    def boundary_activations(samples, k, forward, desc):
        point = f"boundary:{built.stage_names[k - 1]}"
        return job.extract(samples, FeatureCache(job.cache_root, cache_namespace(job.source, point=point)), desc,
                           forward=forward)[0]

    started = time.perf_counter()
    # Early stopping and the best epoch are chosen on an inner split of the training photos, never
    # on the validation photos; the model kept is the best inner-split epoch's (trained on the
    # other 1 - inner_split of the training photos: the cheap option, no second fine-tuning).
    inner = inner_split(f.data, job.cfg.inner_split, job.cfg.seed)
    res = finetune(built, inner, cfg, run_dir=job.out, pipeline=pipeline, workers=job.cfg.workers,
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
