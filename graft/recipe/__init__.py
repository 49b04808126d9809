"""Training a classifier: the lecture's little-data recipe, step by step (graft/recipe/steps.py).

    start     the process group, the seed, the backbone resolved (not built) and its feature cache
    scan      the photos, split into train and val by content hash; what check calls an error skipped
    features  every photo's frozen features from the cache (only what is missing is computed),
              plus K augmented views of each training photo with --aug-views
    probe     the new softmax on those features: the head strategy's classifier, and the
              linear probe the `auto` rule reads
    choose    how much of the network to train (graft.recipe.strategy)
    fit       fine-tune the last stages, or all of them, when the strategy says so (graft.finetune.loop)
    write     the run folder: model, validation predictions, metrics.json, report.html (record.py)

Every setting and its default is in `TrainConfig` (config.py); `train` takes them as keywords.
`graft.train` is this module's `train` function, so reach the module's other names with
`from graft.recipe import ...`.
"""

from __future__ import annotations

from graft.recipe.strategy import choose_strategy
from graft.recipe.config import TrainConfig, TrainResult
from graft.recipe.run_folder import summary, write
from graft.recipe.steps import choose_backbone, cv_accuracy, features, fine_tune, probe, scan, score_val, start

__all__ = ["train", "run_recipe", "TrainConfig", "TrainResult"]

_D = TrainConfig  # the defaults below are TrainConfig's


def train(
    photos,
    out,
    *,
    backbone=_D.backbone,
    weights=_D.weights,
    strategy: str = _D.strategy,
    val_split: float = _D.val_split,
    cache_dir=_D.cache_dir,
    epochs: int | None = _D.epochs,
    lr: float | None = _D.lr,
    weight_decay: float = _D.weight_decay,
    label_smoothing: float = _D.label_smoothing,
    patience: int | None = _D.patience,
    batch_size: int = _D.batch_size,
    seed: int = _D.seed,
    workers: int | None = _D.workers,
    augment: str | None = _D.augment,
    aug=_D.aug,
    aug_views: int | str = _D.aug_views,
    train_stages: int = _D.train_stages,
    new_hidden=_D.new_hidden,
    from_scratch: bool = _D.from_scratch,
    resume: bool = _D.resume,
    boundary_cache: bool = _D.boundary_cache,
    aug_device: str = _D.aug_device,
    decode_once: bool = _D.decode_once,
    balance: str = _D.balance,
    solver: str = _D.solver,
    inner_split: float = _D.inner_split,
    budget: float = _D.budget,
    final: bool = _D.final,
    report: bool = _D.report,
    log=_D.log,
    progress: bool = _D.progress,
) -> TrainResult:
    """Train a classifier on `photos` and write it to the run folder `out`.

    `photos` is `PHOTOS/train/<class>/*` + `PHOTOS/val/<class>/*`, or `PHOTOS/<class>/*` (then a
    content-hash split holds out `val_split` of each class). `backbone` is "default",
    "timm:<name>", "tv:<name>" or a built Backbone; `weights` a local weights file.

    `strategy`: "head" (frozen backbone, new softmax on cached features), "partial" (the last
    `train_stages` stages train too; or, with `new_hidden`, are replaced by new hidden layers),
    "full" (everything trains; `from_scratch` for random initialisation) or "auto" (chosen from
    the data, see graft.recipe.strategy). The head on cached features is always trained first: it is
    the linear probe `auto` decides with, and the baseline the others are reported against.

    Head strategy: `aug_views=K` adds the cached features of K augmented draws of every training
    image (preset `augment`, default "light", overrides `aug`) to what the head trains on;
    "auto" (the default) extracts 4 and keeps them only if they cross-validate better on the
    training photos, where that can tell (graft.recipe.config.AUTO_VIEWS*); 0: none. Fine-tuning (default preset graft.augment.DEFAULT_PRESET, "standard")
    strategies augment on the fly in loader workers (`augment="none"` switches it off, which lets
    the frozen prefix's activations come from the cache; `aug_device="cpu"|"cuda"` runs flips and
    colour ops per sample on the trainer's device instead; `decode_once` keeps decoded photos in
    the cache folder so later epochs skip JPEG decoding). `resume` continues a killed run.

    Everything chosen (the head's solver, L2 strength or epochs, class weights `balance`, the
    strategy under auto, fine-tuning's early stopping) is chosen on the training photos only;
    the validation photos are predicted once for val_accuracy. `final=True` trains on the
    validation photos too (a model for deployment): then no held-out figure exists and
    val_accuracy is None.

    `photos` may also be a label file (.csv or .jsonl, columns path,label[,split]; graft.data.labels).
    Every epoch of the head and of fine-tuning adds a row to RUN/log.csv as it ends; `log=
    "tensorboard"` also writes TensorBoard event files to RUN/tensorboard/ (graft.recipe.log).
    """
    settings = dict(locals())  # exactly the keywords above
    photos, out = settings.pop("photos"), settings.pop("out")
    return run_recipe(photos, out, TrainConfig(**settings))


def run_recipe(photos, out, cfg: TrainConfig) -> TrainResult:
    """The steps in order (see the module docstring). Under torchrun every rank runs them,
    sharing the extraction and the fine-tuning; rank 0 alone scores and writes the run."""
    job = start(cfg, out, photos)
    try:
        return _steps(job, photos, cfg)
    finally:
        if job.epoch_log is not None:
            job.epoch_log.close()


def _steps(job, photos, cfg: TrainConfig) -> TrainResult:
    data = scan(job, photos)
    if cfg.backbone == "auto":  # chosen by cross-validation on the training photos, within --budget
        job = choose_backbone(job, data)
    feats = features(job, data)
    if cfg.strategy == "head" and not job.dist.is_main:  # features are shared; the head trains once, on rank 0
        return TrainResult(job.out, {"rank": job.dist.rank, "strategy": "head",
                                     "cache": {"misses": job.stats.misses}})
    linear_probe = probe(job, feats)
    probe_cv = cv_accuracy(linear_probe)  # chosen on the training photos: never the val figure
    choice = choose_strategy(cfg.strategy, feats.data, probe_cv, train_stages=cfg.train_stages,
                             frozen_only=f"--backbone {job.source.spec} concatenates frozen features" if job.concat else None)
    common = summary(job, feats, choice, probe_cv, linear_probe)
    fitted = linear_probe if choice.strategy == "head" else fine_tune(job, feats, choice)
    if not job.dist.is_main:  # rank 0 evaluates and writes; the weights are the same on every rank
        return TrainResult(job.out, {"rank": job.dist.rank, **common, "history": fitted.history})
    if fitted.selection is None:
        fitted.selection = linear_probe.selection
    if fitted.val_logits is None:
        fitted.val_logits = score_val(job, feats, fitted)
    return TrainResult(job.out, write(job, feats, common, fitted))
