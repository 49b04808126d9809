"""Training a classifier: the lecture's little-data recipe, step by step.

    start        the process group, the seed, the backbone resolved (not built) and its feature
                 cache (steps.py)
    scan         the photos, split into train and val by content hash; what check calls an error
                 skipped (steps.py)
    choose_backbone  --backbone auto: the bundled backbone that cross-validates best on the
                 training photos within --budget; the default backbone: the same, only where its
                 head misses enough training photos for another to show (backbone_choice.py)
    extract      every photo's frozen features from the cache (only what is missing is computed),
                 plus K augmented views of each training photo with --aug-views (extraction.py)
    fit_head     the new softmax on those features: the head strategy's classifier, and the
                 linear probe the `auto` rule reads (steps.py)
    choose       how much of the network to train: under auto, by a short trial of fine-tuning
                 against the head on the training photos, within --budget (strategy.py, trial.py)
    fit_network  fine-tune the last stages, or all of them, when the strategy says so (steps.py,
                 over graft.finetune)
    refit        the chosen head fitted again on training + validation photos, once the
                 validation figure is taken, when graft drew the validation photos (steps.py)
    write        the run folder: model, validation predictions, metrics.json, report.html
                 (run_folder.py)

Every setting, its default and its help is a field of `TrainConfig` (config.py); `train` takes
them as keywords. `graft.train` is this module's `train` function, so reach the module's other
names with `from graft.recipe import ...`. Importing the package imports no torch (`graft train
--help` reads TrainConfig): the steps load when a run starts.
"""

from __future__ import annotations

from graft.recipe.config import TrainConfig, TrainResult
from graft.recipe.settings import takes_settings

__all__ = ["train", "run_recipe", "TrainConfig", "TrainResult"]


@takes_settings(TrainConfig)
def train(photos, out, **settings) -> TrainResult:
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
    training photos, where that can tell (graft.recipe.config.AUTO_VIEWS*); 0: none. Fine-tuning
    strategies (default preset graft.augment.DEFAULT_PRESET, "standard") augment on the fly in
    loader workers (`augment="none"` switches it off, which lets the frozen prefix's activations
    come from the cache; `aug_device="cpu"|"cuda"` runs flips and colour ops per sample on the
    trainer's device instead; `decode_once` keeps decoded photos in the cache folder so later
    epochs skip JPEG decoding). `resume` continues a killed run.

    Everything chosen (the head's solver, L2 strength or epochs, class weights `balance`, the
    strategy under auto, fine-tuning's early stopping) is chosen on the training photos only;
    the validation photos are predicted once for val_accuracy. `final=True` trains on the
    validation photos too (a model for deployment): then no held-out figure exists and
    val_accuracy is None.

    `photos` may also be a label file (.csv or .jsonl, columns path,label[,split]; graft.data.labels).
    Every epoch of the head and of fine-tuning adds a row to RUN/log.csv as it ends; `log=
    "tensorboard"` also writes TensorBoard event files to RUN/tensorboard/ (graft.recipe.log).
    A keyword that is no setting is refused (GraftError) before anything is read.
    """
    return run_recipe(photos, out, TrainConfig.from_keywords(settings))


def run_recipe(photos, out, cfg: TrainConfig) -> TrainResult:
    """The steps in order (see the module docstring). Under torchrun every rank runs them,
    sharing the extraction and the fine-tuning; rank 0 alone scores and writes the run."""
    from graft.recipe.steps import start

    job = start(cfg, out, photos)
    try:
        return _steps(job, photos, cfg)
    finally:
        try:
            if job.epoch_log is not None:
                job.epoch_log.close()
        finally:
            if job.lock is not None:  # released even when the log could not be written
                from graft.run.guard import unlock_run

                unlock_run(job.lock)


def _steps(job, photos, cfg: TrainConfig) -> TrainResult:
    # here, not at the top: the steps import torch, which `graft train --help` must not
    from graft.recipe.backbone_choice import choose_backbone, weigh_for_default
    from graft.recipe.extraction import extract
    from graft.recipe.run_folder import summary, write
    from graft.recipe.steps import cv_accuracy, fit_head, fit_network, refit_on_all, scan, score_val
    from graft.recipe.strategy import choose_strategy
    from graft.recipe.trial import weigh_finetuning

    data = scan(job, photos)
    if job.dist.is_main:  # the photos are usable: from here on this training writes the run folder
        from graft.run.guard import lock_run

        job.lock = lock_run(job.out)
    if cfg.backbone == "auto":  # chosen by cross-validation on the training photos, within --budget
        job = choose_backbone(job, data)
    elif cfg.backbone == "default":  # the others weighed only where the training photos say one could pay
        job = weigh_for_default(job, data)
    feats = extract(job, data)
    if cfg.strategy == "head" and not job.dist.is_main:  # features are shared; the head trains once, on rank 0
        return TrainResult(job.out, {"rank": job.dist.rank, "strategy": "head",
                                     "cache": {"misses": job.stats.misses}})
    linear_probe = fit_head(job, feats)
    probe_cv = cv_accuracy(linear_probe)  # chosen on the training photos: never the val figure
    frozen_only = f"--backbone {job.source.spec} concatenates frozen features" if job.source.frozen_only else None
    choice = choose_strategy(cfg.strategy, feats.data, probe_cv, train_stages=cfg.train_stages, frozen_only=frozen_only,
                             trial=lambda: weigh_finetuning(job, feats, probe_cv, budget=cfg.budget))
    common = summary(job, feats, choice, probe_cv, linear_probe)
    fitted = linear_probe if choice.strategy == "head" else fit_network(job, feats, choice)
    if not job.dist.is_main:  # rank 0 evaluates and writes; the weights are the same on every rank
        return TrainResult(job.out, {"rank": job.dist.rank, **common, "history": fitted.history})
    if fitted.selection is None:
        fitted.selection = linear_probe.selection
    if fitted.val_logits is None:
        fitted.val_logits = score_val(job, feats, fitted)
    refit_on_all(job, feats, fitted)  # after the figure: the model written learns from every photo
    return TrainResult(job.out, write(job, feats, common, fitted))
