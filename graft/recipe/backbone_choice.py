"""`--backbone auto`: the recipe's step that picks the backbone, by cross-validation on the
training photos' cached features within --budget seconds of extraction (the candidates and their
costs: graft.recipe.config.AUTO_CANDIDATES). The default backbone does the same where the
training photos say a bigger or joined one could pay (weigh_for_default, issue 23)."""

from __future__ import annotations

import numpy as np

from graft.backbones import resolve_backbone
from graft.backbones.spec import join_specs
from graft.data import Dataset
from graft.data.placeholders import RefuseNonPhotos
from graft.errors import GraftError
from graft.features.concat import JoinedCache, join_rows, source_features
from graft.recipe.config import (AUTO_CANDIDATES, BACKBONE_BUDGET_S, MIN_MISSES_TO_WEIGH, GUESS_S_PER_PHOTO,
                                 TrainConfig)
from graft.recipe.steps import Job


def concat_allowed(cfg: TrainConfig, data: Dataset) -> bool:
    """Whether --backbone auto may choose a concatenation: only for a run that would train the head
    alone anyway (a concatenation cannot fine-tune) and takes no fixed number of views."""
    from graft.recipe.strategy import head_only, smallest_class

    trained_on = data.train + data.val if cfg.final else data.train  # what choose_strategy will count
    return head_only(cfg.strategy, smallest_class(trained_on, len(data.classes))) and cfg.aug_views in ("auto", 0)


def weigh_for_default(job: Job, data: Dataset) -> Job:
    """The default backbone (lite1), unless the training photos say another could pay: its head's
    cross-validated accuracy is below PROBE_GOOD_ENOUGH and it misses at least
    MIN_MISSES_TO_WEIGH of them (a big or hard set: many classes, a head well below perfect).
    Then the candidates are weighed as --backbone auto weighs them, within --budget (default
    BACKBONE_BUDGET_S) estimated from the default's own measured extraction rate. The default's
    training features are cached for the next step either way; only training photos are read.
    job.backbone_weighed says what was weighed and why (the summary's and the report's line)."""
    from graft.recipe.strategy import PROBE_GOOD_ENOUGH

    cfg, n = job.cfg, len(data.train)
    if cfg.weights is not None or job.dist.enabled:
        return job  # the user's own weights; several processes: the default, as before
    if n * (1 - 1 / max(len(data.classes), 2)) < MIN_MISSES_TO_WEIGH:  # even chance would miss fewer
        job.backbone_weighed = {"weighed": False, "why": f"{n} training photos: too few for another backbone's "
                                                         f"fewer mistakes to show; one fast network"}
        return job
    feats, ok, stats = source_features(job.source, data.train, job.pooled, batch_size=cfg.batch_size,
                                       workers=cfg.workers, progress=job.progress, desc="extracting features",
                                       load_for=lambda pre: RefuseNonPhotos(pre.load), dist=job.dist,
                                       graph_wanted=job.writes_graph)
    for part in stats.parts.values():  # the default's own features: the summary counts them once (skips: extract's)
        job.stats.add_ahead(part)
    rows = np.flatnonzero(ok)
    y = np.array([s.label for s in data.train])[rows]
    cv = job.choose_head(feats[rows], y, [data.train[i] for i in rows],
                         len(data.classes)).to_json()["cv_accuracy"]["mean"]
    misses = len(rows) * (1 - cv) if cv is not None else 0.0
    if cv is None or cv >= PROBE_GOOD_ENOUGH or misses < MIN_MISSES_TO_WEIGH:
        why = (f"the default's head cross-validates {cv:.3f} on the training photos ({misses:.0f} missed): "
               if cv is not None else "no cross-validation possible: ") + "no other backbone weighed; one fast network"
        job.backbone_weighed = {"weighed": False, "why": why, "cv": cv}
        return job
    rate = (stats.seconds / stats.misses / dict(AUTO_CANDIDATES).get("lite1", 1.0)) if stats.misses >= 32 else None
    default, pooled = job.source, job.pooled
    job = choose_backbone(job, data, rate=rate or GUESS_S_PER_PHOTO, cached=default)
    kept = same_network(job.source, default)
    if kept:  # lite1 under its own name: the run stays "default"
        job.source, job.pooled = default, pooled
    job.backbone_weighed = {"weighed": True, "cv": cv, "chosen": job.source.spec, "why": (
        f"the default's head cross-validates {cv:.3f} ({misses:.0f} of {len(rows)} training photos missed): "
        f"weighed the bundled backbones and their concatenations within the budget; "
        + ("kept the default" if kept else f"chose {job.source.spec}"))}
    return job


def same_network(a, b) -> bool:
    """Two sources of one single network and weights, whatever they are called (default = lite1)."""
    return (len(a.parts) == len(b.parts) == 1 and a.arch == b.arch
            and a.weights.digest == b.weights.digest)


def choose_backbone(job: Job, data: Dataset, rate: float | None = None, cached=None) -> Job:
    """--backbone auto: each bundled backbone whose extraction of the training photos fits in
    --budget seconds (estimated from lite0's measured rate x its relative cost) is cross-validated
    on the TRAINING photos' cached features (graft.heads.search.choose_head), then, where the run
    can use one (concat_allowed), every concatenation of two or more of those (`lite0+lite2`:
    their features side by side, nothing more to extract); the best mean cv accuracy wins, ties
    to the cheaper. The winner's features are then in the cache. `rate`: lite0's seconds a photo
    when known already (then even the first candidate's extraction is estimated first); `cached`:
    a source whose training features are in the cache already (it costs nothing)."""
    from itertools import combinations


    cfg = job.cfg
    table, spent, extracted = [], 0.0, {}
    y = np.array([s.label for s in data.train])

    def cross_validate(spec, feats, ok, **row):
        rows = np.flatnonzero(ok)
        choice = job.choose_head(feats[rows], y[rows], [data.train[i] for i in rows], len(data.classes))
        cv = choice.to_json()
        table.append({"backbone": spec, "cv_accuracy": cv["cv_accuracy"]["mean"],
                      "cv_accuracy_std": cv["cv_accuracy"]["std"], **row})

    budget = cfg.budget or BACKBONE_BUDGET_S
    for spec, factor in AUTO_CANDIDATES:
        source = resolve_backbone(spec)
        known = cached is not None and same_network(source, cached)
        estimate = None if rate is None else 0.0 if known else rate * factor * len(data.train)
        if estimate is not None and spent + estimate > budget:
            table.append({"backbone": spec, "skipped": f"estimated {estimate:.0f} s of extraction would pass "
                                                       f"--budget {budget:g} s ({spent:.0f} s spent)"})
            continue
        feats, ok, stats = source_features(source, data.train, JoinedCache(source.parts, job.cache_root),
                                           load_for=lambda pre: RefuseNonPhotos(pre.load), batch_size=cfg.batch_size,
                                           workers=cfg.workers, progress=job.progress, desc=f"extracting {spec}",
                                           dist=job.dist)
        spent += stats.seconds
        if rate is None:  # lite0's seconds per photo, measured (a warm cache costs nothing: no estimate)
            rate = stats.seconds / max(stats.misses, 1) / factor if stats.misses else 0.0
        extracted[spec] = (feats, ok, factor, stats.seconds)
        cross_validate(spec, feats, ok, extraction_s=round(stats.seconds, 3), computed=stats.misses,
                       relative_cost=factor)
    for n in range(2, len(extracted) + 1) if concat_allowed(cfg, data) else ():
        for specs in combinations(extracted, n):
            parts, joined = [extracted[spec] for spec in specs], join_specs(specs)
            cross_validate(joined, *join_rows([p[0] for p in parts], [p[1] for p in parts], joined),
                           extraction_s=round(sum(p[3] for p in parts), 3), computed=0,
                           relative_cost=round(sum(p[2] for p in parts), 3))
    scored = [r for r in table if r.get("cv_accuracy") is not None]
    if not scored:
        raise GraftError("--backbone auto: no candidate could be cross-validated (too few training photos per class)")
    best = max(scored, key=lambda r: (r["cv_accuracy"], -r["relative_cost"]))
    for r in table:
        r["chosen"] = r is best
    job.source = resolve_backbone(best["backbone"])
    job.pooled = JoinedCache(job.source.parts, job.cache_root)
    job.backbone_candidates = table
    return job
