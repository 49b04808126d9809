"""The recipe's feature step: every photo's frozen features from the cache (computing only what is
missing) and, for the head, the augmented views of the training photos that --aug-views asks for
or `auto` weighs."""

from __future__ import annotations

import logging

import numpy as np

from graft.cache.rows import with_views
from graft.data import Dataset
from graft.data.digests import settle_racy
from graft.errors import GraftError
from graft.heads.softmax import memory_budget
from graft.recipe.augmentation import describe
from graft.recipe.limits import check_views_fit
from graft.recipe.steps import Features, Job

log = logging.getLogger("graft")


def extract(job: Job, data: Dataset) -> Features:
    """Every photo's frozen features from the cache (computing only what is missing), and with
    --aug-views those of K augmented draws of each training photo."""
    samples = data.train + data.val
    rows, ok = job.extract(samples, job.pooled, "extracting features", keep=False)
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
    out = Features(kept, rows[train_idx], y[train_idx], rows[val_idx], y[val_idx], skipped)
    k, why = views_plan(job, kept, out)
    if k:  # before any view is computed: refuse what cannot fit on the cache's disk (one line)
        check_views_fit(k, len(kept.train), out.x_train.shape[-1], job.cache_root)
    out.views = {"asked": job.cfg.aug_views, "k": k, "reason": why}
    given = "--aug" if job.cfg.aug else "--augment" if job.cfg.augment not in (None, "none") else None
    if not k and given and job.cfg.strategy == "head" and job.dist.is_main:
        log.warning("%s is unused: no augmented views were weighed (%s)", given, why)
    if k and job.cfg.aug_views == "auto" and not weigh_views_on_share(job, kept, out, k):
        k = 0  # they lost on the share: the other photos' views are never computed
    if k:
        out.x_train, out.augmentation = _with_views(job, kept.train, out.x_train, k)
    if job.dist.is_main:  # seconds after the scan: photos copied just before it can be trusted now
        settle_racy()
    if out.x_train.nbytes + out.x_val.nbytes <= memory_budget():  # in memory, as always
        out.x_train, out.x_val = np.asarray(out.x_train), np.asarray(out.x_val)
        if not len(out.x_val):  # no validation photo: (0, D), as the head expects
            out.x_val = np.zeros((0, out.x_train.shape[-1]), np.float32)
    return out


def views_plan(job: Job, data: Dataset, out: Features) -> tuple[int, str]:
    """How many augmented views of each training photo to extract for the head, and why: K as
    asked, or for --aug-views auto AUTO_VIEWS where cross-validation can weigh them and they could
    pay (see graft.recipe.config) and, with the clean features `out`, they fit the head's memory
    budget, else 0."""
    from graft.recipe.strategy import head_only, smallest_class
    from graft.recipe.config import AUTO_VIEWS, AUTO_VIEWS_MAX_PHOTOS, AUTO_VIEWS_MIN_PER_CLASS, MIN_MISSES_TO_WEIGH

    asked = job.cfg.aug_views
    if job.source.frozen_only:  # (TrainConfig refuses --aug-views K with one; auto never chooses one then)
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
    if (out.x_train.nbytes + out.x_val.nbytes) * (1 + AUTO_VIEWS) > memory_budget():  # weighed in memory
        return 0, "the features with views would pass the head's memory budget: ask for them with --aug-views K"
    cv = clean_head_cv(job, data, out)
    misses = round(len(data.train) * (1 - cv)) if cv is not None else None
    if misses is not None and misses < MIN_MISSES_TO_WEIGH:
        return 0, (f"the clean head cross-validates {cv:.3f} ({misses} of {len(data.train)} training photos "
                   f"missed, < {MIN_MISSES_TO_WEIGH}): too few for views' gain to show; none weighed")
    return AUTO_VIEWS, f"auto: {AUTO_VIEWS} views, kept only if they cross-validate better"


def clean_head_cv(job: Job, data: Dataset, out: Features) -> float | None:
    """The clean head's cross-validated accuracy on the training photos (None: no cross-validation
    possible), chosen as graft.recipe.steps.fit_head chooses it, on the same memo: fit_head reuses
    it, and the default backbone's own check (weigh_for_default) has usually filled it already."""
    return job.choose_head(np.asarray(out.x_train), out.y_train, data.train,
                           len(data.classes)).to_json()["cv_accuracy"]["mean"]


def _with_views(job: Job, train, x_train, k: int):
    from graft.backbones.bf16_engine import views_precision
    from graft.features.extract import extract_views

    preset, pipeline = job.pipeline("views", train)
    views = extract_views(job.source, train, job.cache, pipeline, k, seed=job.cfg.seed,
                          batch_size=job.cfg.batch_size, workers=job.cfg.workers, progress=job.progress,
                          stats=job.stats, decoded_dir=job.decoded_dir, dist=job.dist, keep=False,
                          precision=views_precision(job.cfg.precision))
    return with_views(x_train, views, job.cache), describe(preset, pipeline, views=k)


def weigh_views_on_share(job: Job, data: Dataset, out: Features, k: int) -> bool:
    """--aug-views auto, first on a stratified share of the training photos (AUTO_VIEWS_SHARE of
    each class, more where the smallest class would keep fewer than AUTO_VIEWS_MIN_PER_CLASS),
    cross-validated with and without K views on the same folds, as the head is chosen. Where the
    views lose there, they are dropped and the other photos' views are never computed;
    where they win, every photo's views are computed and the verdict is taken again on all of
    them (graft.recipe.steps.fit_head), so the share can only save work, never make views win
    that would lose on every photo (bench/views_share.py: how often it drops views that would
    have won). Records the share's figures in out.views. -> whether to go on."""
    from graft.data.folder import inner_split
    from graft.recipe.config import AUTO_VIEWS_MIN_PER_CLASS, AUTO_VIEWS_SHARE
    from graft.recipe.strategy import smallest_class

    fraction = max(AUTO_VIEWS_SHARE, AUTO_VIEWS_MIN_PER_CLASS / max(1, smallest_class(data.train, len(data.classes))))
    if fraction >= 1:
        return True  # the share would be every photo: weighed once, on all of them
    held = {id(s) for s in inner_split(data, fraction, job.cfg.seed).val}
    idx = np.array([i for i, s in enumerate(data.train) if id(s) in held])
    share = [data.train[i] for i in idx]
    clean = out.x_train[idx] if isinstance(out.x_train, np.ndarray) else out.x_train.subset(idx)
    views = np.asarray(_with_views(job, share, clean, k)[0])
    y = out.y_train[idx]

    def cv(x) -> float | None:
        c = job.choose_head(x, y, share, len(data.classes))
        return c.cv[c.score]["mean"]

    with_views, without = cv(views), cv(np.asarray(clean))
    # only a loss there drops them: a tie (common on a few dozen photos) says nothing, so every
    # photo's views are weighed as before (hymenoptera's train/: a tie on the share, a win on all)
    win = with_views is None or without is None or with_views >= without
    out.views.update({"share": len(idx), "of": len(data.train), "share_cv_with": with_views,
                      "share_cv_without": without})
    if not win:
        out.views.update({"k": 0, "used": False, "cv_with": with_views, "cv_without": without,
                          "reason": f"auto: {k} views lost on a share of {len(idx)} training photos "
                                    f"(cv {with_views:.3f} with, {without:.3f} without); the rest's were not computed"})
    return win


def require_every_class(classes, labels, what) -> None:
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=len(classes))
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        raise GraftError(f"no usable {what} image left for class(es): {', '.join(empty)}")
