"""Calibrating a run, so that predictions can say "neither": `unknown` for photos unlike every class.

`graft calibrate RUN PHOTOS` writes `RUN/calibration.json` (+ `RUN/calibration.safetensors`),
everything fitted on photos of the run's classes that the model was NOT fitted on: out-of-fold
predictions of the TRAINING photos (stratified k-fold on the cached features, the run's head
recipe refitted without each fold; graft.heads.folds, graft.heads.probe, graft.heads.search), or for a
fine-tuned run the training photos fine-tuning held out for early stopping. Fitted on a few
dozen validation photos instead (what graft did before), the thresholds refused one real test
photo in eight on a 12-class flower set (issue 11); and those photos could not then be the
independent check they are now.

* **temperature** T: the logits are divided by T before the softmax, T fitted by minimising the
  negative log-likelihood (temperature scaling, Guo et al. 2017), so that "0.9" means right about
  9 times in 10. A weak prior on log T (sd 1) keeps T finite when the photos are all classified
  right with a wide margin, where plain NLL would send T to 0 and every probability to 1.000.
* **novelty threshold**: a softmax must always pick one of its classes, and on a photo of
  something else it is often *more* confident than on real ones (a 2-class head is sure a green
  triangle is "very blue"), so confidence alone cannot say "neither". The novelty of a photo is
  the cosine distance from its backbone features to the k-th nearest training photo's (deep
  nearest neighbours, Sun et al. 2022; each training photo left out of its own neighbours);
  the threshold is a quantile of the training photos' novelty (0.99 by default).
* **confidence threshold** tau on the temperature-scaled top probability: the smallest tau that
  brings the kept photos to `target_accuracy`, but never so high that fewer than `keep` (default
  0.95, plus one standard error) of the photos are kept by both checks together.

calibration.json records the trade-off (`keep_table`: what each share kept would cost in
thresholds and buy in accuracy; `novelty.curve`: the share of in-class photos each novelty
threshold refuses) and then, as the reported figure, what the rule does to the validation
photos, scored once as new photos and never used to choose (`val_unknown`, `val_kept`).

A prediction (graft.use.inference) is `unknown` when its confidence is below tau or its novelty above
the threshold; it still lists the top-k classes with their (temperature-scaled) probabilities.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from graft._util.atomic import read_json, write_json, write_safetensors
from graft._util.digest import sha256_file
from graft.errors import GraftError
from graft.run.store import CALIBRATION_JSON

if TYPE_CHECKING:  # torch is imported by the functions that fit or compute with tensors: using a
    import torch  # calibration on an exported model's outputs (load_calibration, softmax) needs none

log = logging.getLogger("graft")

REFERENCE_FILE = "calibration.safetensors"
FORMAT = 1
MAX_CURVE_POINTS = 200


# --- temperature scaling ---------------------------------------------------------------------

def fit_temperature(logits, labels, *, prior_sd: float | None = 1.0, max_iter: int = 100) -> float:
    """The temperature T > 0 minimising the NLL of softmax(logits / T) on `labels`.

    Optimised over log T with L-BFGS, in float64. `prior_sd`: sd of a Gaussian prior on log T
    centred on 0 (T = 1), i.e. a MAP fit; negligible with hundreds of photos, it keeps T finite
    when the photos are perfectly separated. None: plain NLL. T is clamped to [0.01, 100].
    """
    import torch

    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if z.ndim != 2 or y.ndim != 1 or len(z) != len(y):
        raise GraftError(f"fit_temperature needs logits (N, C) and labels (N,), got {tuple(z.shape)} and {tuple(y.shape)}")
    if not len(y):
        raise GraftError("cannot fit a temperature on zero photos")
    if int(y.min()) < 0 or int(y.max()) >= z.shape[1]:
        raise GraftError(f"labels must lie in 0..{z.shape[1] - 1}")
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)
    lo, hi = math.log(1e-2), math.log(1e2)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.clamp(lo, hi).exp(), y, reduction="sum")
        if prior_sd:
            loss = loss + 0.5 * (log_t / prior_sd) ** 2
        loss.backward()
        return loss

    opt.step(closure)
    return float(math.exp(min(hi, max(lo, float(log_t.detach())))))


def nll(logits, labels, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of softmax(logits / T)."""
    import torch

    z = torch.as_tensor(np.asarray(logits, dtype=np.float64)) / temperature
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    return float(torch.nn.functional.cross_entropy(z, y))


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# --- the confidence threshold ----------------------------------------------------------------

def accuracy_coverage_curve(confidence, correct) -> list[dict]:
    """For each distinct confidence c (highest first): coverage and accuracy of {conf >= c}."""
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    if conf.shape != ok.shape or conf.ndim != 1:
        raise GraftError("confidence and correct must be 1-D and of the same length")
    order = np.argsort(-conf, kind="stable")
    conf, ok = conf[order], ok[order]
    n = len(conf)
    hits = np.cumsum(ok)
    curve = []
    for j in range(n):  # the last of each run of equal confidences: the set {conf >= c}
        if j + 1 < n and conf[j + 1] == conf[j]:
            continue
        curve.append({"threshold": float(conf[j]), "coverage": (j + 1) / n, "accuracy": float(hits[j] / (j + 1))})
    return curve


def choose_threshold(confidence, correct, target_accuracy: float) -> dict:
    """The smallest tau such that accuracy over {confidence >= tau} reaches `target_accuracy`.

    0.0 when every photo together already reaches it (nothing needs refusing); else the lowest
    confidence kept. When no tau reaches the target, the tau of the best accuracy reachable (the
    smallest such tau). Returns {threshold, accuracy, coverage, reached}.
    """
    curve = accuracy_coverage_curve(confidence, correct)
    if not curve:
        raise GraftError("cannot choose a threshold on zero photos")
    eps = 1e-12
    full = curve[-1]
    if full["accuracy"] >= target_accuracy - eps:
        return {"threshold": 0.0, "accuracy": full["accuracy"], "coverage": 1.0, "reached": True}
    passing = [p for p in curve if p["accuracy"] >= target_accuracy - eps]
    if passing:
        best, reached = passing[-1], True  # lowest threshold: the most photos kept
    else:
        top = max(p["accuracy"] for p in curve)
        best, reached = [p for p in curve if p["accuracy"] >= top - eps][-1], False
    return {"threshold": best["threshold"], "accuracy": best["accuracy"], "coverage": best["coverage"],
            "reached": reached}


# --- novelty: distance to the training photos in feature space -------------------------------

def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def knn_distance(queries: torch.Tensor, reference: torch.Tensor, k: int, *, leave_one_out: bool = False,
                 chunk: int = 1024) -> np.ndarray:
    """Cosine distance from each query to its k-th nearest reference row (rows unit-normalised).

    `leave_one_out`: queries ARE the reference rows, each excluded from its own neighbours.
    """
    import torch

    out = []
    k_eff = min(k, reference.shape[0] - (1 if leave_one_out else 0))
    if k_eff < 1:
        raise GraftError("novelty needs at least two reference photos")
    for start in range(0, len(queries), chunk):
        sims = queries[start:start + chunk] @ reference.T
        if leave_one_out:
            rows = torch.arange(sims.shape[0])
            sims[rows, rows + start] = -math.inf
        out.append(1.0 - sims.topk(k_eff, dim=1).values[:, -1])
    return torch.cat(out).double().numpy() if out else np.zeros(0)


class Novelty:
    """The stored reference features and threshold: `distance(features)`, `threshold`."""

    def __init__(self, reference: torch.Tensor, k: int, threshold: float):
        self.reference = _unit(reference.float())
        self.k = k
        self.threshold = threshold

    def distance(self, features: torch.Tensor) -> np.ndarray:
        return knn_distance(_unit(features.float()), self.reference, self.k)


def _reference_k(n: int) -> int:
    return max(1, min(10, n // 100))


# --- choosing the thresholds together: keep at least `keep` of the in-class photos ----------

KEEP = 0.95  # the default: at least 95% of the photos of the run's classes are kept (not `unknown`)
NOVELTY_QUANTILE = 0.99  # the novelty check refuses 1% of them by default (at most half the refusal budget)
KEEP_GRID = (0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 1.0)  # the trade-off table's rows (and the chosen keep)
REFUSED_GRID = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)  # the novelty table's rows


def keep_with_margin(keep: float, n: int) -> float:
    """`keep` plus one standard error of a share measured on n photos, sqrt(keep (1 - keep) / n),
    at most 1: thresholds that keep this share of the photos they were fitted on keep `keep` of
    new photos about five times in six, not one time in two."""
    if n <= 0:
        return float(keep)
    return float(min(1.0, keep + math.sqrt(keep * (1.0 - keep) / n)))


def choose_thresholds(confidence, correct, novelty=None, *, keep: float = KEEP, target_accuracy: float = 0.99,
                      novelty_quantile: float | None = None, margin: bool = True) -> dict:
    """Both thresholds on photos of the run's classes the model was not fitted on.

    The refusal budget is 1 - keep' (keep' = keep_with_margin(keep, n), or keep without
    `margin`). The novelty threshold is the `novelty_quantile` of `novelty` (default
    NOVELTY_QUANTILE, or higher when half the budget is under 1%). The confidence threshold
    is the smallest that brings the photos the novelty check keeps to `target_accuracy`
    (choose_threshold), but never so high that fewer than keep' of all the photos are kept:
    the lower of the two. Returns {threshold, novelty_threshold, novelty_quantile, keep, keep_with_margin, kept,
    accuracy (of the kept), refused: {confidence, novelty} (shares), reached, limited_by}.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    n = len(conf)
    if not n:
        raise GraftError("cannot choose thresholds on zero photos")
    if not 0.0 <= float(keep) <= 1.0:
        raise GraftError(f"--keep must be a share between 0 and 1, got {keep}")
    want = keep_with_margin(float(keep), n) if margin else float(keep)
    budget = 1.0 - want
    nov_threshold, q = None, None
    passes = np.ones(n, bool)
    if novelty is not None:
        nov = np.asarray(novelty, dtype=np.float64)
        q = float(novelty_quantile) if novelty_quantile is not None else max(NOVELTY_QUANTILE, 1.0 - budget / 2)
        nov_threshold = float(np.quantile(nov, q, method="higher"))
        passes = nov <= nov_threshold
    need = min(n, math.ceil(want * n - 1e-9))  # photos to keep
    kept_conf = np.sort(conf[passes])[::-1]
    # the highest threshold that still keeps `need` photos (0: all the novelty check keeps are needed)
    tau_keep = math.inf if need <= 0 else float(kept_conf[need - 1]) if need < len(kept_conf) else 0.0
    tau_target = choose_threshold(conf[passes], ok[passes], target_accuracy)["threshold"] if passes.any() else 0.0
    tau = min(tau_target, tau_keep)
    if tau_target == 0.0:
        limited_by = "nothing to refuse: the photos reach the target accuracy"
    elif tau_target <= tau_keep:
        limited_by = "target accuracy"
    else:
        limited_by = "keep"
    kept = passes & (conf >= tau)
    accuracy = float(ok[kept].mean()) if kept.any() else 0.0
    return {"threshold": tau, "novelty_threshold": nov_threshold, "novelty_quantile": q, "keep": float(keep),
            "keep_with_margin": round(want, 6), "kept": float(kept.mean()), "accuracy": accuracy,
            "refused": {"confidence": float((conf < tau).mean()), "novelty": float((~passes).mean())},
            "reached": accuracy >= target_accuracy - 1e-12, "limited_by": limited_by}


def keep_table(confidence, correct, novelty=None, *, keep: float = KEEP, target_accuracy: float = 0.99,
               novelty_quantile: float | None = None) -> list[dict]:
    """The trade-off: for each share of in-class photos asked to be kept (KEEP_GRID and `keep`),
    the thresholds --keep would choose, the share kept and the accuracy of the kept photos."""
    rows = []
    for k in sorted({*KEEP_GRID, float(keep)}):
        c = choose_thresholds(confidence, correct, novelty, keep=k, target_accuracy=target_accuracy,
                              novelty_quantile=novelty_quantile)
        rows.append({"keep": k, "threshold": round(c["threshold"], 6),
                     "novelty_threshold": None if c["novelty_threshold"] is None else round(c["novelty_threshold"], 6),
                     "kept": round(c["kept"], 6), "accuracy": round(c["accuracy"], 6),
                     "chosen": k == float(keep)})
    return rows


def novelty_table(novelty) -> list[dict]:
    """For each share of in-class photos the novelty check may refuse (REFUSED_GRID): the
    threshold that does it on these photos, and the share it refuses (ties may make it less)."""
    nov = np.asarray(novelty, dtype=np.float64)
    rows = []
    for r in REFUSED_GRID:
        t = float(np.quantile(nov, 1.0 - r, method="higher"))
        rows.append({"refused_asked": r, "threshold": round(t, 6), "refused": round(float((nov > t).mean()), 6)})
    return rows


# --- the photos the thresholds are fitted on: never ones the model was fitted on -------------

FOLDS = 5


class _FitSet:
    """The photos the thresholds are fitted on: rows of the features, their labels, logits of
    a model that was not fitted on them, and how they were found (in words, for the record)."""

    def __init__(self, rows, labels, logits, source: str, how: str):
        self.rows, self.labels, self.logits, self.source, self.how = rows, labels, logits, source, how


def out_of_fold_logits(meta: dict, x, y, keys=None, *, k: int = FOLDS) -> tuple[np.ndarray, str]:
    """Logits of each training photo by the run's head recipe fitted WITHOUT it: stratified
    k-fold on the cached features (graft.heads.folds, the folds training chose the head on), the
    recipe model.json records (L-BFGS at its L2 strength, or AdamW for its number of epochs,
    with its class weights) refitted on the other folds, the held-out fold predicted. A run
    that records no recipe gets the L-BFGS probe with its strength chosen on the same folds.
    Augmented views are not used: the folds train on the clean features. -> (logits, the folds
    and recipe in words)."""
    from graft.heads.folds import stratified_folds, train_rows
    from graft.heads.probe import train_probe

    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=int)
    c = len(meta["classes"])
    training = meta.get("training") or {}
    rec = training.get("head") or {}
    seed = int(rec.get("seed", 0) or 0)
    folds = stratified_folds(y, k, keys=keys, seed=seed)  # NotEnoughPhotos: the caller falls back
    weights = rec.get("class_weight")
    if rec.get("solver") == "lbfgs" and rec.get("strength"):
        from graft.heads.probe import fit_probe

        def fit(tr):
            return fit_probe(x[tr], y[tr], c, float(rec["strength"]), class_weight=weights).head
        what = f"L-BFGS probe, L2 strength {float(rec['strength']):.3g}"
    elif rec.get("solver") == "adamw" and rec.get("epochs"):
        from dataclasses import fields

        from graft.heads.softmax import HeadConfig
        from graft.heads.search import refit_head

        cfg = HeadConfig(**{f.name: rec[f.name] for f in fields(HeadConfig) if f.name in rec})

        def fit(tr):
            return refit_head(x[tr], y[tr], c, cfg, int(rec["epochs"]), class_weight=weights)
        what = f"AdamW head, {int(rec['epochs'])} epochs"
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
    views = ((meta.get("augmentation") or {}).get("views") or 0)
    note = f"; the run's head also trained on {views} augmented views, the folds on clean features" if views else ""
    return oof, f"{len(folds)} folds, the run's recipe: {what}{note}"


def _fit_set(run_dir: Path, meta: dict, feats, ok, samples: list, n_train: int, val_rows, head,
             warnings: list) -> _FitSet:
    """Out-of-fold predictions of the training photos (frozen-backbone runs); the photos
    fine-tuning held out for early stopping (fine-tuned runs); else, with a warning, the
    validation photos (what graft did before: a fine-tuned run that does not record its inner
    split, or a class with one training photo)."""
    import torch

    from graft.heads.folds import NotEnoughPhotos
    from graft.run.store import inner_split

    training = meta.get("training") or {}
    train = samples[:n_train]
    tr_rows = np.flatnonzero(ok[:n_train])

    def by_head(rows):
        with torch.no_grad():
            return head(torch.from_numpy(np.ascontiguousarray(feats[rows]))).double().numpy()

    def labels(rows):
        return np.array([samples[i].label for i in rows], dtype=int)

    why = None
    if not meta["backbone"].get("stored"):
        try:
            logits, how = out_of_fold_logits(meta, feats[tr_rows], labels(tr_rows),
                                             [train[i].digest for i in tr_rows])
            return _FitSet(tr_rows, labels(tr_rows), logits, "training",
                           f"out-of-fold predictions of the {len(tr_rows)} training photos ({how})")
        except NotEnoughPhotos:
            why = "a class has a single readable training photo: nothing to cross-validate"
    elif training.get("inner_split") is not None and training.get("finetune"):
        from graft.data import Dataset

        seed = int((training.get("finetune") or {}).get("seed", 0) or 0)
        held = inner_split(Dataset(Path("."), list(meta["classes"]), list(train), []),
                           float(training["inner_split"]), seed).val
        at = {id(s): i for i, s in enumerate(train)}
        rows = np.array([at[id(s)] for s in held if ok[at[id(s)]]], dtype=int)
        if len(rows):
            return _FitSet(rows, labels(rows), by_head(rows), "inner",
                           f"the {len(rows)} training photos fine-tuning held out for early stopping "
                           f"(inner split {float(training['inner_split']):g}): the network never trained on them")
        why = "fine-tuning held out no training photo"
    else:
        why = "this fine-tuned run does not record its inner split (trained by an earlier graft)"
    if not len(val_rows):
        raise GraftError(f"cannot calibrate {run_dir}: {why}, and there are no validation photos to fall back on")
    warnings.append(f"thresholds fitted on the validation photos, as graft did before: {why}; the validation "
                    f"figure is then not an independent one")
    return _FitSet(val_rows, labels(val_rows), by_head(val_rows), "validation",
                   f"the {len(val_rows)} validation photos ({why})")


# --- calibrating a run -----------------------------------------------------------------------

def calibrate_run(run_dir, photos_val=None, target_accuracy: float = 0.99, *, keep: float = KEEP,
                  novelty: bool = True, novelty_quantile: float | None = None, max_reference: int = 4096,
                  cache_dir=None, weights=None, batch_size: int = 32, workers: int | None = None,
                  progress: bool = False) -> dict:
    """Fit T, the confidence threshold and the novelty threshold; write RUN/calibration.json.

    `photos_val`: the PHOTOS folder the run was trained on; its train/val split is found again
    exactly as training drew it (graft.run.store.photos_split). Everything is fitted on photos of the
    run's classes that the model was NOT fitted on: out-of-fold predictions of the training
    photos for frozen-backbone runs (their features come from the cache training filled), the
    photos fine-tuning held out for early stopping for fine-tuned ones (_fit_set). The
    thresholds keep at least `keep` of those photos (choose_thresholds); the trade-off tables
    say what other choices would keep. The validation photos are then scored once, as new
    photos, for the reported figure (`val_unknown`, `val_kept`): nothing is chosen on them.
    Returns what calibration.json holds.
    """
    import torch

    from graft.run.store import photos_split, read_run_meta, run_features

    run_dir = Path(run_dir)
    meta = read_run_meta(run_dir)
    if photos_val is None:
        raise GraftError(f"calibration needs the photos {run_dir} was trained on: "
                         f"graft calibrate {run_dir} PHOTOS")
    if not 0.0 < float(target_accuracy) <= 1.0:
        raise GraftError(f"--target-accuracy must be in (0, 1], got {target_accuracy}")
    if not 0.0 <= float(keep) <= 1.0:
        raise GraftError(f"--keep must be a share between 0 and 1 (e.g. 0.95), got {keep}")
    if novelty_quantile is not None and not 0.0 < float(novelty_quantile) <= 1.0:
        raise GraftError(f"novelty quantile must be in (0, 1], got {novelty_quantile}")
    classes = list(meta["classes"])
    data = photos_split(meta, photos_val, cache_dir=cache_dir)
    train, val, skipped = list(data.train), list(data.val), list(data.skipped)
    final = bool((meta.get("training") or {}).get("final"))
    if final:  # --final: the validation photos were trained on; nothing is held out
        train, val = train + val, []
    if not train:
        raise GraftError(f"no training photos of this run found in {photos_val}: give the photos it was trained on")
    samples = train + val
    feats, ok, head, more_skipped = run_features(run_dir, samples, cache_dir=cache_dir, weights=weights,
                                                 batch_size=batch_size, workers=workers, progress=progress)
    skipped += more_skipped
    val_rows = len(train) + np.flatnonzero(ok[len(train):])
    warnings: list[str] = []
    fit = _fit_set(run_dir, meta, feats, ok, samples, len(train), val_rows, head, warnings)
    temperature = fit_temperature(fit.logits, fit.labels)
    probs = softmax(fit.logits, temperature)
    confidence, correct = probs.max(1), probs.argmax(1) == fit.labels

    nov_info, nov_fit, nov_of = None, None, None
    if novelty:
        ref_rows = np.array([i for i in _subsample_rows(len(train), max_reference) if ok[i]], dtype=int)
        nov_info, nov_of = _novelty_reference(run_dir, feats, ref_rows)
        nov_fit = nov_of(fit.rows)
    choice = choose_thresholds(confidence, correct, nov_fit, keep=keep, target_accuracy=float(target_accuracy),
                               novelty_quantile=novelty_quantile)
    if nov_info is not None:
        nov_info.update(threshold=choice["novelty_threshold"], quantile=choice["novelty_quantile"],
                        curve=novelty_table(nov_fit))
    n_fit = len(fit.rows)
    if n_fit < 30:
        warnings.append(f"only {n_fit} photos to fit the thresholds on: they are rough estimates")
    if not choice["reached"] and choice["limited_by"] == "keep":
        log.info("the confidence threshold stops where it would refuse more than %.1f%% of the photos "
                 "(--keep %g); the kept ones are %.3f right (target %g)", 100 * (1 - choice["keep_with_margin"]),
                 keep, choice["accuracy"], target_accuracy)
    result = {
        "format": FORMAT,
        "classes": classes,
        "model_sha256": sha256_file(run_dir / "model.safetensors"),
        "temperature": temperature,
        "threshold": choice["threshold"],
        "keep": float(keep),
        "target_accuracy": float(target_accuracy),
        "target_reached": choice["reached"],
        "fit": {
            "photos": fit.source,  # "training" (out-of-fold), "inner" (fine-tuning's) or "validation"
            "how": fit.how,
            "n": n_fit,
            "accuracy": round(float(correct.mean()), 6),
            "nll": {"before": round(nll(fit.logits, fit.labels), 6),
                    "after": round(nll(fit.logits, fit.labels, temperature), 6)},
            "kept": round(choice["kept"], 6),
            "accuracy_kept": round(choice["accuracy"], 6),
            "refused": {k: round(v, 6) for k, v in choice["refused"].items()},
            "keep_with_margin": choice["keep_with_margin"],
            "limited_by": choice["limited_by"],
        },
        "curve": _thin(accuracy_coverage_curve(confidence, correct), choice["threshold"]),
        "keep_table": keep_table(confidence, correct, nov_fit, keep=keep, target_accuracy=float(target_accuracy),
                                 novelty_quantile=novelty_quantile),
        "novelty": nov_info,
        "val_unknown": None,
        "val_kept": None,
        "photos": str(Path(photos_val)),
        "final": final,
        "skipped": skipped,
        "warnings": warnings,
    }
    if len(val_rows):  # the reported figure: the validation photos scored once, as new photos
        with torch.no_grad():
            v_logits = head(torch.from_numpy(np.ascontiguousarray(feats[val_rows]))).double().numpy()
        v_labels = np.array([samples[i].label for i in val_rows], dtype=int)
        p = softmax(v_logits, temperature)
        refused = p.max(1) < choice["threshold"]
        far = nov_of(val_rows) > choice["novelty_threshold"] if novelty else np.zeros(len(val_rows), bool)
        kept, right = ~(refused | far), p.argmax(1) == v_labels
        result["val_unknown"] = {"n_val": int(len(val_rows)), "confidence": int(refused.sum()),
                                 "novelty": int(far.sum()) if novelty else None, "either": int((~kept).sum())}
        result["val_kept"] = {"n": int(len(val_rows)), "kept": round(float(kept.mean()), 6),
                              "accuracy": round(float(right.mean()), 6),
                              "accuracy_kept": round(float(right[kept].mean()), 6) if kept.any() else None,
                              "kept_and_right": round(float((kept & right).mean()), 6)}
    write_json(run_dir / CALIBRATION_JSON, result)
    for w in warnings:
        log.warning("%s", w)
    return result


def _subsample_rows(n: int, cap: int) -> np.ndarray:
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, cap, replace=False))


def _novelty_reference(run_dir: Path, feats, ref_rows):
    """Store the reference features (the training photos, RUN/calibration.safetensors) and
    return (its calibration.json entry, less the threshold; novelty_of(rows)): each photo's
    distance to the k-th nearest reference photo other than itself, as a new photo like it
    would score (a reference photo is left out of its own neighbours)."""
    import torch

    if len(ref_rows) < 2:
        raise GraftError("novelty needs at least two readable training photos; pass novelty=False to skip it")
    stored = _unit(torch.from_numpy(np.ascontiguousarray(feats[ref_rows])).float()).half().contiguous()
    k = _reference_k(len(stored))
    unit = _unit(stored.float())  # exactly what Novelty compares new photos with
    loo = knn_distance(unit, unit, k, leave_one_out=True)
    write_safetensors(run_dir / REFERENCE_FILE, {"reference": stored})
    at = {int(r): j for j, r in enumerate(ref_rows)}

    def novelty_of(rows) -> np.ndarray:
        out = np.empty(len(rows))
        missing = [j for j, i in enumerate(rows) if int(i) not in at]
        for j, i in enumerate(rows):
            if int(i) in at:
                out[j] = loo[at[int(i)]]
        if missing:
            queries = _unit(torch.from_numpy(np.ascontiguousarray(feats[np.asarray(rows)[missing]])).float())
            out[missing] = knn_distance(queries, unit, k)
        return out

    info = {
        "method": "knn-cosine",
        "k": k,
        "threshold": None,
        "quantile": None,
        "n_reference": int(len(stored)),
        "reference_distance": {"median": float(np.median(loo)), "max": float(loo.max())},
        "file": REFERENCE_FILE,
        "sha256": sha256_file(run_dir / REFERENCE_FILE),
    }
    return info, novelty_of


def _thin(curve: list[dict], keep_threshold: float) -> list[dict]:
    if len(curve) > MAX_CURVE_POINTS:
        idx = set(np.linspace(0, len(curve) - 1, MAX_CURVE_POINTS).round().astype(int).tolist())
        curve = [p for i, p in enumerate(curve) if i in idx or p["threshold"] == keep_threshold]
    return [{"threshold": round(p["threshold"], 6), "coverage": round(p["coverage"], 6),
             "accuracy": round(p["accuracy"], 6)} for p in curve]


# --- using a calibration ---------------------------------------------------------------------

def load_calibration(run_dir) -> dict:
    """RUN/calibration.json, checked against the run's current model; GraftError says what to do."""
    run_dir = Path(run_dir)
    path = run_dir / CALIBRATION_JSON
    cal = read_json(path, missing=f"{run_dir} has no calibration: run `graft calibrate {run_dir} PHOTOS` first "
                    f"(PHOTOS: the photos it was trained on), or pass --reject none or a probability")
    if cal.get("format") != FORMAT:
        raise GraftError(f"{path} has format {cal.get('format')}; run `graft calibrate {run_dir} PHOTOS` again")
    if cal.get("model_sha256") != sha256_file(run_dir / "model.safetensors"):
        raise GraftError(f"{path} was made for an earlier model in {run_dir} (it was retrained since): "
                         f"run `graft calibrate {run_dir} PHOTOS` again")
    return cal


def load_novelty(run_dir, calibration: dict) -> Novelty | None:
    info = calibration.get("novelty")
    if not info:
        return None
    from safetensors.torch import load_file

    path = Path(run_dir) / info["file"]
    if not path.is_file() or sha256_file(path) != info["sha256"]:
        raise GraftError(f"{path} is missing or does not match {CALIBRATION_JSON}: "
                         f"run `graft calibrate {run_dir} PHOTOS` again")
    return Novelty(load_file(str(path))["reference"], int(info["k"]), float(info["threshold"]))
