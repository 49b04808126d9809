"""Photos of neither class saved in a class folder (a cup in bees/): the commonest real labelling
error, which the mislabel check cannot see, since a cup still looks more like one class than the
other. On the deep features (graft.check.deep), each photo's distance to the nearest class mean,
measured out of fold (means and spread fitted on the other folds, so a photo never vouches for
itself) in the shape of the classes' own spread: a Mahalanobis distance under one shared
covariance, Ledoit-Wolf shrunk so that a few hundred photos in 1,280 dimensions give a usable
one (Lee et al. 2018 use the same distance to find photos of other things).

The kNN cosine distance `graft calibrate` uses for novelty (graft.use.calibrate.novelty) ranks
5 planted photos nearly as well (places 1-6 on ants/bees, 1-8 on trashnet; this distance: 1-6
and 1-5, bench/check_foreign.py) but its distances are bounded and bunched: a fence on them caught
at most 2 of the 5. The threshold is a rule on the photos checked, not a fitted number: Tukey's
"far out" fence, upper quartile + 3 interquartile ranges of the out-of-fold distances.
"""

from __future__ import annotations

import numpy as np

from graft.check.deep import DeepFeatures
from graft.check.findings import Findings

FOREIGN_FENCE_IQR = 3.0  # Tukey's far-out fence: upper quartile + 3 interquartile ranges
FOREIGN_MIN_PHOTOS = 20  # fewer photos give no quartiles worth a fence


def find_foreign(deep: DeepFeatures, findings: Findings) -> None:
    """Report the photos among the rows of `deep` that lie far from every class, most foreign first."""
    n = len(deep.y)
    if n < FOREIGN_MIN_PHOTOS:
        findings.add("check_skipped", findings.root, f"check for photos of neither class skipped: it needs at least "
                     f"{FOREIGN_MIN_PHOTOS} usable photos to know what a typical one looks like ({n} here)")
        return
    scores, nearest = foreign_scores(deep.x, deep.y, len(deep.names), deep.folds)
    q1, q3 = np.percentile(scores, [25, 75])
    fence = q3 + FOREIGN_FENCE_IQR * (q3 - q1)
    if not q3 > q1:  # most photos score alike: no spread to be an outlier of
        return
    place = np.empty(n, int)
    place[np.argsort(-scores, kind="stable")] = np.arange(1, n + 1)
    for i in np.flatnonzero(scores > fence):
        f = deep.files[i]
        findings.add("foreign", f.path,
                     f"labelled {f.cls!r}, but it looks like neither class: out of fold, it lies farther from "
                     f"every class than {_all_but(place[i], n)} (nearest: {deep.names[nearest[i]]!r}; a far "
                     f"outlier, beyond the upper quartile of these distances by {FOREIGN_FENCE_IQR:g} "
                     f"interquartile ranges): remove it unless it shows {f.cls!r}", score=float(scores[i]))


def _all_but(place: int, n: int) -> str:
    """'all 249 other photos' for the farthest, else 'all but 2 of the 248 other photos'."""
    return f"all {n - 1} other photos" if place == 1 else f"all but {place - 1} of the {n - 1} other photos"


def foreign_scores(x: np.ndarray, y: np.ndarray, n_classes: int, folds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's squared Mahalanobis distance to the nearest class mean, means and shrunk shared
    covariance fitted on the other folds (cosine geometry: rows scaled to length 1), and which
    class that is. -> (distances, nearest class)."""
    z = np.asarray(x, np.float64)
    z = z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-12)
    scores = np.zeros(len(y))
    nearest = np.zeros(len(y), int)
    for k in np.unique(folds):
        test = folds == k
        d2 = _fit_distances(z[~test], y[~test], n_classes, z[test])
        scores[test] = d2.min(1)
        nearest[test] = d2.argmin(1)
    return scores, nearest


def _fit_distances(z: np.ndarray, y: np.ndarray, n_classes: int, queries: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distances of `queries` to the means of the classes present in (z, y), under
    their pooled within-class covariance shrunk towards a multiple of the identity by the
    Ledoit-Wolf rule (2004); inf for a class absent from z."""
    present = [c for c in range(n_classes) if (y == c).any()]
    means = np.zeros((n_classes, z.shape[1]))
    for c in present:
        means[c] = z[y == c].mean(0)
    centred = z - means[y]
    n, p = centred.shape
    cov = centred.T @ centred / n
    ev, vectors = np.linalg.eigh(cov)
    ev = np.clip(ev, 0.0, None)
    mu = ev.sum() / p
    s_norm2 = (ev**2).sum()
    d2 = s_norm2 - 2 * mu * ev.sum() + p * mu**2  # ||S - mu I||^2
    quad = np.einsum("ij,ij->i", centred @ cov, centred)  # x' S x of each row
    b2 = ((centred**2).sum(1) ** 2 - 2 * quad + s_norm2).sum() / n**2
    shrink = min(1.0, b2 / d2) if d2 > 0 else 1.0
    whiten = vectors / np.sqrt(np.maximum((1 - shrink) * ev + shrink * mu, 1e-12))
    q, m = queries @ whiten, means[present] @ whiten
    out = np.full((len(queries), n_classes), np.inf)
    out[:, present] = np.maximum((q**2).sum(1)[:, None] - 2 * q @ m.T + (m**2).sum(1)[None, :], 0.0)
    return out
