"""The two thresholds, chosen together on photos of the run's classes the model was not fitted on:
the confidence threshold tau on the temperature-scaled top probability, and the novelty
threshold, so that at least `keep` of NEW photos like them are kept, nine times in ten (an exact
finite-sample bound, refusals_allowed: keeping `keep` of the photos fitted on kept only about
0.935 of the ants/bees validation photos, issue 20); and the tables of the trade-off
calibration.json records (what other choices would keep and refuse)."""

from __future__ import annotations

import math

import numpy as np

from graft.errors import GraftError

MAX_CURVE_POINTS = 200  # calibration.json's accuracy-coverage curve, thinned to this many points
KEEP = 0.95  # the default: at least 95% of the photos of the run's classes are kept (not `unknown`)
NOVELTY_QUANTILE = 0.99  # the novelty check refuses 1% of them by default (at most half the refusal budget)
ASSURANCE = 0.9  # how often (over the draw of the photos fitted on) new photos are kept at least `keep` of the time
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


# --- choosing the thresholds together: keep at least `keep` of new in-class photos ----------

def refusals_allowed(n: int, keep: float, assurance: float = ASSURANCE) -> int:
    """How many of n photos thresholds may refuse so that they keep at least `keep` of NEW
    photos like them, `assurance` of the time: the largest r with P(Binomial(n, 1 - keep) <= r)
    <= 1 - assurance, or -1 when not even refusing none is enough (too few photos).

    Why exact: a threshold at the (r+1)-th lowest of n exchangeable scores refuses a share of
    new photos distributed as Beta(r + 1, n - r) (the finite-sample law conformal prediction
    rests on), and P(Beta(r + 1, n - r) > a) = P(Binomial(n, a) <= r). With assurance 0.5 this
    is about the plain conformal quantile ceil((n + 1) keep) / n, which keeps `keep` only on
    average: one run in two would keep less."""
    a = 1.0 - float(keep)
    if n <= 0 or a <= 0.0:
        return -1
    if a >= 1.0:
        return n - 1
    log_pmf, log_ratio = n * math.log1p(-a), math.log(a) - math.log1p(-a)
    cdf, limit = 0.0, 1.0 - float(assurance)
    for r in range(n):
        cdf += math.exp(log_pmf)  # P(Binomial(n, a) <= r)
        if cdf > limit + 1e-12:
            return r - 1
        log_pmf += math.log(n - r) - math.log(r + 1) + log_ratio
    return n - 1


def keep_with_margin(keep: float, n: int, assurance: float = ASSURANCE) -> float:
    """The share of n photos the thresholds must keep so that new photos are kept at least
    `keep` of the time, `assurance` of the time (refusals_allowed): 1 when none may go."""
    return 1.0 - max(0, refusals_allowed(n, keep, assurance)) / n if n > 0 else float(keep)


def choose_thresholds(confidence, correct, novelty=None, *, keep: float = KEEP, target_accuracy: float = 0.99,
                      novelty_quantile: float | None = None, assurance: float = ASSURANCE) -> dict:
    """Both thresholds on n photos of the run's classes the model was not fitted on, so that
    together they keep at least `keep` of new photos like them `assurance` of the time.

    The two checks share r = refusals_allowed(n, keep) refusals. Each threshold sits at an
    order statistic of its own score (the novelty one at the (r_n + 1)-th highest distance,
    the confidence one at the (r_c + 1)-th lowest confidence of all n), and the share of new
    photos their union refuses is at most the two tails together, which by the same law as
    refusals_allowed's is within 1 - keep `assurance` of the time when r_n + r_c + 1 <= r: so
    the novelty check gets r_n = floor(n (1 - novelty_quantile)) of them (default
    NOVELTY_QUANTILE, or 1 - (1 - keep) / 2 when that is higher), the confidence check what is
    left. (Holding novelty's own share as surely, r_n = refusals_allowed(n, novelty_quantile),
    would put its threshold at the farthest training photo on a few hundred photos: 11 of 24
    pictures of neither class let through on ants/bees instead of none.) The confidence threshold is the smallest that brings the photos both keep to
    `target_accuracy` (choose_threshold), but never above the one r_c allows.
    Returns {threshold, novelty_threshold, novelty_quantile, keep, keep_with_margin (the share
    of these photos that must be kept), assurance, kept, accuracy (of the kept), refused:
    {confidence, novelty} (shares), reached, limited_by}.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    n = len(conf)
    if not n:
        raise GraftError("cannot choose thresholds on zero photos")
    if not 0.0 <= float(keep) <= 1.0:
        raise GraftError(f"--keep must be a share between 0 and 1, got {keep}")
    r = refusals_allowed(n, keep, assurance)
    nov_threshold, q, passes, r_c = None, None, np.ones(n, bool), r
    if novelty is not None:
        nov = np.asarray(novelty, dtype=np.float64)
        q = float(novelty_quantile) if novelty_quantile is not None else max(NOVELTY_QUANTILE, 1.0 - (1.0 - keep) / 2)
        r_n = max(0, min(r, math.floor(n * (1.0 - q) + 1e-9)))  # its share: 1 - q of these photos
        nov_threshold = float(np.sort(nov)[::-1][r_n])  # refuses at most r_n of these photos (the farther)
        passes, r_c = nov <= nov_threshold, r - r_n - 1
    # refuses at most r_c of all n photos (the less confident): 0 when none may go
    tau_keep = float(np.sort(conf)[r_c]) if r_c >= 0 else 0.0
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
            "keep_with_margin": round(keep_with_margin(keep, n, assurance), 6), "assurance": float(assurance),
            "kept": float(kept.mean()), "accuracy": accuracy,
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


def keep_range(kept: int, n: int, level: float = ASSURANCE) -> list[float]:
    """The shares of new photos kept that `kept` of n is consistent with: the central `level`
    interval (Wilson score), so that a reader can tell a shortfall on a few hundred photos
    from chance (one share measured on 150 photos varies by about 0.02 at 0.95)."""
    if n <= 0:
        return [0.0, 1.0]
    from statistics import NormalDist

    z, p = NormalDist().inv_cdf(0.5 + level / 2), kept / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]
