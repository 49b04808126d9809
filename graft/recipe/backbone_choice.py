"""`--backbone auto`: the recipe's step that picks the backbone, by cross-validation on the
training photos' cached features within --budget seconds of extraction (the candidates and their
costs: graft.recipe.config.AUTO_CANDIDATES)."""

from __future__ import annotations

import numpy as np

from graft.backbones import resolve_backbone
from graft.backbones.spec import join_specs
from graft.data import Dataset
from graft.data.placeholders import RefuseNonPhotos
from graft.errors import GraftError
from graft.features.concat import JoinedCache, join_rows, source_features
from graft.recipe.config import AUTO_CANDIDATES, BACKBONE_BUDGET_S, TrainConfig
from graft.recipe.steps import Job


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

    budget = cfg.budget or BACKBONE_BUDGET_S
    for spec, factor in AUTO_CANDIDATES:
        source = resolve_backbone(spec)
        estimate = None if rate is None else rate * factor * len(data.train)
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
