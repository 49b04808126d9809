"""`--strategy auto` by evidence: does fine-tuning pay on THESE training photos, and can the user
afford it? (issue 23)

The frozen head's cross-validated accuracy is free (the head is fitted anyway). Fine-tuning is
weighed only where it can pay: enough photos in the smallest class (TrialPlan.min_per_class) and
a head clearly below perfect (PROBE_GOOD_ENOUGH). Then a short trial on the fine-tune's own inner
split of the TRAINING photos (graft.data.folder.inner_split, the split that early stopping uses):
the last stages fine-tuned for a few epochs over their cached boundary activations (the frozen
prefix runs once per photo, or once per augmented view with TrialPlan.views; the inner-val
photos' activations are the ones the fine-tune's validation reads later), its new top starting
from the head fitted on the very same inner-train photos, both scored once on the same inner-val
photos. Its seconds per photo, measured, are extrapolated to the full fine-tune. The full
fine-tune runs only if the trial beats the head by more than its noise (the paired standard
error of the difference, photo by photo) AND the estimated time fits the budget; otherwise the
head, with one line saying why.

Measured on trashnet's train/ (bench/ladder_real.py --trial): the head won the trial in every
size tried (3 or 10 epochs, 60 photos a class or all 1,294, clean or 4 augmented views), by 3 to
7 points on 208 inner photos, so `auto` keeps the head there; the issue's 15-epoch augmented
partial fine-tune scored 0.887 held out against the head's 0.849 at 24 minutes, which no trial
this cheap showed.

The validation photos (feats.data.val, feats.x_val) never reach this module's choice: only
feats.data.train and the rows of feats.x_train are read.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import math
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from graft.data import Dataset
from graft.data.folder import inner_split
from graft.features.concat import JoinedCache
from graft.recipe.strategy import PROBE_GOOD_ENOUGH, StrategyChoice, choose_strategy, smallest_class

log = logging.getLogger("graft")

# When the user gave no --budget: a fine-tune that a laptop finishes over a coffee (15 minutes).
AUTO_BUDGET_S = 900.0


@dataclass(frozen=True)
class TrialPlan:
    """How big the trial is. min_per_class: below it nothing is weighed (trashnet's smallest class
    keeps 82 training photos once graft holds out its 20%: the set the ladder must work on; with
    fewer than 50, the inner split's 15% is a handful of photos a class and cannot tell).
    per_class / val_per_class: the trial's inner-train and inner-val photos per class, at most
    (picked by content hash): what the trial costs is one prefix forward for each of them."""

    min_per_class: int = 50
    good_enough: float = PROBE_GOOD_ENOUGH
    per_class: int = 60
    val_per_class: int = 40
    epochs: int = 3
    stages: int = 2
    z: float = 1.0  # the trial must beat the head by more than z paired standard errors
    views: int = 0  # 0: the trial trains on clean activations; K: on K augmented boundary views of each photo


def weigh_finetuning(job, feats, probe_cv: float, *, budget: float | None = None, views: int = 0,
                     plan: TrialPlan = TrialPlan()) -> StrategyChoice:
    """-> the head or partial fine-tuning of plan.stages stages, by a trial on the training
    photos (see the module docstring). `budget`: seconds the full fine-tune may take (None: the
    default AUTO_BUDGET_S); `views`: the K boundary views the full fine-tune would cache
    (graft.finetune.boundary_views; 0: today's loop, the whole network forward every epoch)."""
    data = feats.data
    probe = f"frozen head's cross-validated accuracy {probe_cv:.3f} on the training photos"
    budget_s = float(budget) if budget else AUTO_BUDGET_S
    budget_from = f"--budget {budget_s:g} s" if budget else f"default budget {AUTO_BUDGET_S:g} s (--budget to change)"
    per_class = smallest_class(data.train, len(data.classes))
    why_not = None
    if per_class < plan.min_per_class:
        why_not = (f"{per_class} training images in the smallest class (< {plan.min_per_class}): too few for "
                   f"fine-tuning to pay, or for a trial to tell; train only a new softmax ({probe})")
    elif probe_cv >= plan.good_enough:
        why_not = (f"{probe} >= {plan.good_enough}: the pretrained features already separate the classes; "
                   f"no fine-tuning weighed")
    else:
        why_not = beyond_resolution(job, data, probe_cv, probe, plan)
    if why_not:
        return StrategyChoice("head", plan.stages, why_not, {"trial": None, "decision": "head", "why": why_not})
    if job.dist.enabled:  # one trial per rank could disagree on the timings: the fixed rule decides
        ruled = choose_strategy("auto", data, probe_cv, train_stages=plan.stages)
        return replace(ruled, reason=f"{ruled.reason} (several processes: the fixed rule, no trial)")
    trial = run_trial(job, feats, plan)
    estimate = estimate_seconds(trial, job.cfg.epochs, views)
    evidence = {"trial": trial, "estimate": estimate, "budget_s": budget_s, "budget_from": budget_from}
    choice = decide(trial, estimate, budget_s, budget_from, probe, plan, evidence)
    log.info("--strategy auto: %s", choice.reason)  # said before the long part starts
    return choice


def beyond_resolution(job, data: Dataset, probe_cv: float, probe: str, plan: TrialPlan) -> str | None:
    """Why no trial can tell, or None: the head is expected to miss fewer of the trial's inner-val
    photos than a fine-tune would have to fix (breaking none) for its gain to clear plan.z paired
    standard errors. A few dozen inner photos and a head near 0.97 (hymenoptera's train/: 28
    photos, about 1 expected miss) can only show noise, so the trial's seconds are not spent."""
    inner = inner_split(data, job.cfg.inner_split, job.cfg.seed)
    n = len(capped(inner.val, len(data.classes), plan.val_per_class, f"trial:{job.cfg.seed}"))
    misses, need = n * (1.0 - probe_cv), smallest_clear_gain(n, plan.z)
    if misses >= need:
        return None
    return (f"the head is expected to miss {misses:.1f} of the trial's {n} inner photos, and a fine-tune would "
            f"have to fix {need} of them to show a gain beyond the noise: no trial can tell; train only a new "
            f"softmax ({probe})")


def smallest_clear_gain(n: int, z: float) -> int:
    """The fewest photos of n that a fine-tune must fix, breaking none, for the paired gain to pass
    z standard errors (decide's test); n + 1 when no count can."""
    for m in range(1, n + 1):
        d = np.r_[np.ones(m), np.zeros(n - m)]
        if n > 1 and d.mean() > z * d.std(ddof=1) / math.sqrt(n) * (1 + 1e-9):  # one fix: gain == se exactly
            return m
    return n + 1


def decide(trial: dict, estimate: dict, budget_s: float, budget_from: str, probe: str, plan: TrialPlan,
           evidence: dict) -> StrategyChoice:
    """The verdict and its one line, from the trial's figures (pure: tested on its own)."""
    head, tuned, se, n = trial["head_accuracy"], trial["finetune_accuracy"], trial["noise_se"], trial["inner_val"]
    seen = (f"fine-tuning trial {tuned:.3f} vs head {head:.3f} on the same {n} inner photos of the training set "
            f"(gain {tuned - head:+.3f}, noise +/-{se:.3f})")
    secs = estimate["seconds"]
    if tuned - head <= plan.z * se:
        why, strategy = f"{seen}: no clear gain; train only a new softmax ({probe})", "head"
    elif secs > budget_s:
        why, strategy = (f"{seen}, but {budget_from}: budget {budget_s:.0f} s < estimated {secs:.0f} s of "
                         f"fine-tuning; keep the head ({probe})"), "head"
    else:
        why, strategy = (f"{seen}: fine-tune the last {plan.stages} stages, estimated {secs:.0f} s "
                         f"(up to {estimate['epochs']} epochs over {estimate['photos']} photos; {budget_from})"), "partial"
    return StrategyChoice(strategy, plan.stages, why, {**evidence, "decision": strategy, "why": why})


def run_trial(job, feats, plan: TrialPlan) -> dict:
    """The head and a short fine-tune on the same inner-train photos, scored on the same inner-val
    photos: their accuracies, the paired noise, and what each cost."""
    data = feats.data
    inner = inner_split(data, job.cfg.inner_split, job.cfg.seed)
    n_classes = len(data.classes)
    train = capped(inner.train, n_classes, plan.per_class, f"trial:{job.cfg.seed}")
    held = capped(inner.val, n_classes, plan.val_per_class, f"trial:{job.cfg.seed}")
    y_held = np.array([s.label for s in held])
    t0 = time.perf_counter()
    head, predicted = head_on(job, feats, train, held)
    head_right = predicted == y_held
    head_s = time.perf_counter() - t0
    tuned, costs = finetune_trial(job, data, train, held, plan, head)
    tuned_right = tuned == y_held
    d = tuned_right.astype(float) - head_right.astype(float)
    se = float(np.std(d, ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 1.0
    return {"inner_train": len(train), "inner_val": len(held), "inner_train_all": len(inner.train),
            "inner_val_all": len(inner.val), "head_accuracy": round(float(head_right.mean()), 4),
            "finetune_accuracy": round(float(tuned_right.mean()), 4), "noise_se": round(se, 4),
            "epochs": plan.epochs, "stages": plan.stages, "head_s": round(head_s, 3), **costs}


def capped(samples: list, n_classes: int, per_class: int, salt: str) -> list:
    """At most `per_class` of each class, the lowest by hash of (salt, content digest): a stable
    stratified subsample, whatever the file order."""
    out = []
    for label in range(n_classes):
        members = sorted((s for s in samples if s.label == label),
                         key=lambda s: hashlib.sha256(f"{salt}:{s.digest}".encode()).digest())
        out += members[:per_class]
    return out


def head_on(job, feats, train: list, held: list) -> tuple[torch.nn.Linear, np.ndarray]:
    """-> (the head chosen on `train`'s cached features, cross-validated as graft's head is, its
    predicted labels for `held`); both are training photos (rows of feats.x_train)."""
    from graft.heads.softmax import predict_labels

    at = {id(s): i for i, s in enumerate(feats.data.train)}
    idx_train, idx_held = [at[id(s)] for s in train], [at[id(s)] for s in held]
    y = np.array([s.label for s in train])
    choice = job.choose_head(clean_rows(feats.x_train, idx_train), y, train, len(feats.data.classes))
    return choice.head, predict_labels(choice.head, clean_rows(feats.x_train, idx_held))


def clean_rows(x, idx: list) -> np.ndarray:
    """The clean features of rows `idx` of x_train: an array (N, D) or (N, 1 + K, D) (the clean
    view first), or graft.cache.rows.FeatureRows of either."""
    if isinstance(x, np.ndarray):
        rows = x[idx]
        return rows[:, 0] if rows.ndim == 3 else rows
    if x.k is None:
        return np.asarray(x.subset(idx))
    return x.take(np.asarray(idx, dtype=np.int64) * x.k)


def finetune_trial(job, data: Dataset, train: list, held: list, plan: TrialPlan,
                   head: torch.nn.Linear) -> tuple[np.ndarray, dict]:
    """-> (labels predicted for `held`, costs): the last plan.stages stages fine-tuned on `train`
    for plan.epochs epochs over their cached boundary activations (clean, or plan.views
    augmented views of each photo), on a copy of the backbone; no early stopping (nothing is
    chosen on `held`, which is scored once, at the end). The new top starts from `head`, the head
    fitted on the same photos (linear probe, then fine-tune): a few epochs then ask whether
    training the last stages improves on the head, rather than whether a random top catches up."""
    from graft.finetune.callbacks import EarlyStop, EpochLog
    from graft.finetune.classifier import boundary_activation_shape

    built = job.source.build()
    k = len(built.stage_names) - plan.stages
    shape = boundary_activation_shape(built, k)
    z_train, z_held, costs = trial_activations(job, built, k, [] if plan.views else train, held)
    cfg = replace(job.cfg.finetune_config(StrategyChoice("partial", plan.stages, "trial")), epochs=plan.epochs,
                  patience=0, boundary_views=plan.views)
    t0 = time.perf_counter()
    trainer = trial_trainer(job, copy.deepcopy(built), Dataset(data.root, data.classes, train, [], [], data.layout),
                            cfg, z_train, costs)
    with torch.no_grad():  # in place: the optimiser holds these very parameters
        trainer.net.head.weight.copy_(head.weight)
        trainer.net.head.bias.copy_(head.bias)
    res = trainer.fit([EpochLog(False), EarlyStop()])
    model = res.model.eval()
    z = torch.from_numpy(np.ascontiguousarray(z_held)).view(len(z_held), *shape)
    with torch.inference_mode():
        b = model.backbone
        logits = [model.head(b.pool(b.run_stages(z[j:j + 64].contiguous(memory_format=torch.channels_last), k, None)))
                  for j in range(0, len(z), 64)]
    costs.update(finetune_s=round(time.perf_counter() - t0, 3),
                 step_s_per_photo=round(res.timings["step_s"] / max(1, plan.epochs * len(train)), 5))
    return torch.cat(logits).argmax(1).numpy(), costs


def trial_trainer(job, net, data: Dataset, cfg, z_train: np.ndarray, costs: dict):
    """The trial's graft.finetune.loop.Trainer over the clean activations `z_train`, or with
    cfg.boundary_views K over K augmented views of each photo (graft.finetune.boundary_views,
    the fine-tune's own augmentation; their seconds go in costs["views_s"])."""
    from graft.finetune.distributed import Context
    from graft.finetune.loop import Trainer

    empty = np.zeros((0, z_train.shape[1]), np.float32)

    def cached(samples, _k, _forward, _desc):
        return z_train if samples else empty

    if not cfg.boundary_views:
        return Trainer(net, data, cfg, pipeline=None, workers=job.cfg.workers, extract=cached, boundary_cache=True,
                       aug_device="workers", decoded_dir=None, dist=Context())
    from graft.finetune.boundary_views import ViewTrainer, boundary_views

    _, pipeline = job.pipeline("finetune", data.train)

    def views_of(samples, k):
        t0 = time.perf_counter()
        cache = JoinedCache(job.source.parts, job.cache_root, f"boundary:{net.stage_names[k - 1]}").parts[0]
        views = boundary_views(net, samples, cache, pipeline, cfg.boundary_views, k, seed=job.cfg.seed,
                               batch_size=job.cfg.batch_size, workers=job.cfg.workers, progress=False,
                               stats=job.stats, decoded_dir=job.decoded_dir)
        costs["views_s"] = round(time.perf_counter() - t0, 3)
        return views

    return ViewTrainer(net, data, cfg, views_of=views_of, extract=cached, workers=job.cfg.workers, dist=Context())


def trial_activations(job, built, k: int, train: list, held: list):
    """-> (z_train, z_held, costs): the activations after the k frozen stages, from the boundary
    cache that fine-tuning itself reads (computing what is missing), and the prefix's seconds per
    photo: measured there when photos were computed, else on one synthetic batch (decoding not
    counted then)."""
    point = f"boundary:{built.stage_names[k - 1]}"
    cache = JoinedCache(job.source.parts, job.cache_root, point)
    before = job.stats.misses
    t0 = time.perf_counter()
    z, _ = job.extract(train + held, cache, "trial: boundary activations",
                       forward=lambda b, x: b.run_stages(x, 0, k))
    spent, computed = time.perf_counter() - t0, job.stats.misses - before
    if computed:
        per_photo, on = spent / computed, f"{computed} photos decoded and computed"
    else:
        size, n = built.preprocessing.size, 8
        with torch.inference_mode():
            was = built.training
            built.eval()
            x = torch.rand(n, 3, size, size).contiguous(memory_format=torch.channels_last)
            built.run_stages(x[:1], 0, k)  # the first call pays for setting up: not timed
            t1 = time.perf_counter()
            built.run_stages(x, 0, k)
            per_photo, on = (time.perf_counter() - t1) / n, f"a synthetic batch of {n} (the cache was warm)"
            built.train(was)
    costs = {"boundary_s": round(spent, 3), "boundary_computed": computed,
             "prefix_s_per_photo": round(per_photo, 5), "prefix_measured_on": on}
    return z[:len(train)], z[len(train):], costs


def estimate_seconds(trial: dict, epochs: int | None, views: int = 0) -> dict:
    """The full fine-tune's seconds, extrapolated from the trial's per-photo costs: every epoch
    over all the inner-train photos (at most `epochs`, default fine-tuning's 15: early stopping
    may end it sooner), plus the inner-val photos' boundary activations once. Today's loop
    (`views` 0) runs the frozen prefix on every photo every epoch; boundary views run it K times a
    photo, once, and the epochs only the trainable stages."""
    from graft.finetune.config import FinetuneConfig

    epochs = epochs or FinetuneConfig.epochs
    n, n_val = trial["inner_train_all"], trial["inner_val_all"]
    prefix, step = trial["prefix_s_per_photo"], trial["step_s_per_photo"]
    once = n_val * prefix + (views * n * prefix if views else 0.0)
    per_epoch = n * (step + (0.0 if views else prefix))
    return {"seconds": round(once + epochs * per_epoch, 1), "epochs": epochs, "photos": n, "views": views,
            "per_epoch_s": round(per_epoch, 2)}
