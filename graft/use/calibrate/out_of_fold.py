"""Out-of-fold logits of the training photos: each photo scored by the run's head recipe refitted
without it, so that the thresholds are fitted on predictions of photos the model was not fitted on
(fitted on a few dozen validation photos instead, they refused one real test photo in eight on a
12-class flower set, issue 11)."""

from __future__ import annotations

import numpy as np

from graft.run.record import RecipeSettings

FOLDS = 5

def out_of_fold_logits(n_classes: int, recipe: RecipeSettings | None, x, y, keys=None, *, views: int = 0,
                       k: int = FOLDS) -> tuple[np.ndarray, str]:
    """Logits of each training photo by the run's head recipe fitted WITHOUT it: stratified
    k-fold on the cached features (graft.heads.folds, the folds training chose the head on), the
    recipe model.json records (L-BFGS at its L2 strength, or AdamW for its number of epochs,
    with its class weights) refitted on the other folds, the held-out fold predicted. A run
    that records no recipe (`recipe` None: model.json's training.head) gets the L-BFGS probe
    with its strength chosen on the same folds. Augmented views (`views` per photo, the run's)
    are not used: the folds train on the clean features. -> (logits, the folds and recipe in
    words)."""
    from graft.heads.folds import stratified_folds, train_rows
    from graft.heads.probe import train_probe

    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=int)
    c = n_classes
    rec = recipe or RecipeSettings()
    seed = rec.seed
    folds = stratified_folds(y, k, keys=keys, seed=seed)  # NotEnoughPhotos: the caller falls back
    weights = rec.class_weight
    if rec.solver == "lbfgs" and rec.strength:
        from graft.heads.probe import fit_probe

        def fit(tr):
            return fit_probe(x[tr], y[tr], c, float(rec.strength), class_weight=weights).head
        what = f"L-BFGS probe, L2 strength {float(rec.strength):.3g}"
    elif rec.solver == "adamw" and rec.epochs:
        from graft.heads.search import refit_head
        from graft.heads.softmax import HeadConfig

        cfg = rec.config(HeadConfig)

        def fit(tr):
            return refit_head(x[tr], y[tr], c, cfg, int(rec.epochs), class_weight=weights)
        what = f"AdamW head, {int(rec.epochs)} epochs"
    else:
        probe = train_probe(x, y, c, k=k, keys=keys, seed=seed)
        return probe.oof_logits.astype(np.float64), (f"{probe.folds} folds, the L-BFGS probe, L2 strength "
                                                     f"{probe.strength:.3g} chosen on them")
    import torch

    oof = np.zeros((len(y), c))
    for held in folds:
        head = fit(train_rows(len(y), held))
        with torch.no_grad():
            oof[held] = head(torch.from_numpy(x[held])).double().numpy()
    note = f"; the run's head also trained on {views} augmented views, the folds on clean features" if views else ""
    return oof, f"{len(folds)} folds, the run's recipe: {what}{note}"
