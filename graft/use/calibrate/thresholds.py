"""The two thresholds, chosen together on photos of the run's classes the model was not fitted on:
the confidence threshold tau on the temperature-scaled top probability, and the novelty
threshold, so that at least `keep` of those photos are kept; and the tables of the trade-off
calibration.json records (what other choices would keep and refuse)."""

from __future__ import annotations

import math

import numpy as np

from graft.errors import GraftError

MAX_CURVE_POINTS = 200  # calibration.json's accuracy-coverage curve, thinned to this many points
KEEP = 0.95  # the default: at least 95% of the photos of the run's classes are kept (not `unknown`)
NOVELTY_QUANTILE = 0.99  # the novelty check refuses 1% of them by default (at most half the refusal budget)
KEEP_GRID = (0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 1.0)  # the trade-off table's rows (and the chosen keep)
REFUSED_GRID = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)  # the novelty table's rows


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


def thin_curve(curve: list[dict], keep_threshold: float) -> list[dict]:
    """An accuracy-coverage curve as calibration.json records it: at most about MAX_CURVE_POINTS
    points, evenly spaced, the chosen threshold's always among them; figures rounded."""
    if len(curve) > MAX_CURVE_POINTS:
        idx = set(np.linspace(0, len(curve) - 1, MAX_CURVE_POINTS).round().astype(int).tolist())
        curve = [p for i, p in enumerate(curve) if i in idx or p["threshold"] == keep_threshold]
    return [{"threshold": round(p["threshold"], 6), "coverage": round(p["coverage"], 6),
             "accuracy": round(p["accuracy"], 6)} for p in curve]


# --- choosing the thresholds together: keep at least `keep` of the in-class photos ----------

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
