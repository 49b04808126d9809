"""Photos that are likely mislabelled: the frozen backbone's features (graft.check.deep) give the
label a low out-of-fold probability under a logistic regression, far below its class's typical
one, and the photo's nearest neighbours in feature space mostly carry another label. Both must hold: either alone
flags too many honest photos on small sets.
"""

from __future__ import annotations

import numpy as np

from graft.check.deep import DeepFeatures
from graft.check.findings import Findings

MISLABEL_MAX_PROB = 0.2  # out-of-fold probability of the given label below this ...
MISLABEL_MARGIN = 0.5  # ... and this far below the class's mean self-confidence
MISLABEL_L2 = 1.0  # strong enough that a few dozen photos do not give confident spurious fits
MISLABEL_NEIGHBOURS = 10  # ... and the nearest photos in feature space must agree:
MISLABEL_MAX_AGREEMENT = 0.2  # at most this share of them has the given label


def find_mislabelled(deep: DeepFeatures, findings: Findings) -> None:
    """Report likely mislabelled photos among the rows of `deep`."""
    cand, x, y, names = deep.files, deep.x, deep.y, deep.names
    probs = oof_probabilities(x, y, len(names), deep.folds)
    given = probs[np.arange(len(y)), y]
    self_conf = np.array([given[y == k].mean() for k in range(len(names))])
    agree = neighbour_agreement(x, y, [f.digest for f in cand], MISLABEL_NEIGHBOURS)
    for i, f in enumerate(cand):
        k = int(probs[i].argmax())
        if (k == y[i] or given[i] >= MISLABEL_MAX_PROB or given[i] > self_conf[y[i]] - MISLABEL_MARGIN
                or agree[i] > MISLABEL_MAX_AGREEMENT):
            continue
        findings.add("likely_mislabelled", f.path,
                   f"labelled {f.cls!r}, but it looks like {names[k]!r}: out-of-fold probability "
                   f"{given[i]:.2f} for {f.cls!r} ({probs[i, k]:.2f} for {names[k]!r}; photos of {f.cls!r} "
                   f"typically get {self_conf[y[i]]:.2f}), and {agree[i]:.0%} of its "
                   f"{MISLABEL_NEIGHBOURS} most similar photos are labelled {f.cls!r}: check its label")


def neighbour_agreement(x: np.ndarray, y: np.ndarray, digests: list[str], k: int) -> np.ndarray:
    """Share of each row's k nearest other rows (cosine, centred features) that have its label.

    Identical files (same digest) are not each other's neighbours.
    """
    z = x - x.mean(0)
    z /= np.linalg.norm(z, axis=1, keepdims=True) + 1e-12
    _, group = np.unique(np.asarray(digests), return_inverse=True)
    k = max(1, min(k, len(y) - 1))
    out = np.zeros(len(y))
    block = max(16, min(1024, 4_000_000 // max(1, len(y))))
    for s in range(0, len(y), block):
        sims = z[s : s + block] @ z.T
        sims[group[s : s + block, None] == group[None, :]] = -np.inf  # itself and its copies
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        out[s : s + block] = (y[nearest] == y[s : s + block, None]).mean(1)
    return out


def oof_probabilities(x: np.ndarray, y: np.ndarray, n_classes: int, folds: np.ndarray,
                      l2: float = MISLABEL_L2) -> np.ndarray:
    """Out-of-fold class probabilities of an L2-regularised logistic regression (full-batch LBFGS)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny problems: thread start-up and contention cost 30x the maths
    try:
        probs = np.zeros((len(y), n_classes), np.float64)
        for k in np.unique(folds):
            test = folds == k
            probs[test] = _fit_predict(x[~test], y[~test], x[test], n_classes, l2)
    finally:
        torch.set_num_threads(threads)
    return probs


def _fit_predict(x_train, y_train, x_test, n_classes, l2) -> np.ndarray:
    import torch

    mean = x_train.mean(0)
    std = x_train.std(0) + 1e-6
    xt = torch.from_numpy((x_train - mean) / std).double()
    yt = torch.from_numpy(y_train).long()
    w = torch.zeros(x_train.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=200, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w + b, yt) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        xs = torch.from_numpy((x_test - mean) / std).double()
        return (xs @ w + b).softmax(1).numpy()
