"""Deterministic stratified folds and their scores: what cross-validation in graft.heads.probe and
graft.heads.search shares (one module, below both, so neither imports the other)."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn


class NotEnoughPhotos(ValueError):
    """Cross-validation needs at least two training photos in every class."""


# --- folds ------------------------------------------------------------------------------------------

def stratified_folds(y, k: int = 5, *, keys=None, seed: int = 0) -> list[np.ndarray]:
    """Held-out row indices of min(k, smallest class) folds, each class spread evenly over them.

    Within a class, photos are ordered by a hash of (seed, key) when `keys` (content digests)
    are given, so a photo's fold follows from the photos and not from the order files were
    listed in; otherwise by a permutation drawn from a generator seeded with `seed`. They are
    then dealt round robin, each class starting where the previous one stopped, so fold sizes
    differ by at most one.
    """
    y = np.asarray(y, dtype=int)
    counts = np.bincount(y)
    present = counts[counts > 0]
    if len(present) == 0 or present.min() < 2:
        raise NotEnoughPhotos("cross-validation needs at least 2 training photos in every class")
    k = int(min(k, present.min()))
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    start = 0
    for c in np.flatnonzero(counts):
        rows = np.flatnonzero(y == c)
        if keys is not None:
            order = sorted(rows, key=lambda i: hashlib.sha256(f"{seed}:{keys[i]}".encode()).digest())
        else:
            order = rows[rng.permutation(len(rows))]
        for j, i in enumerate(order):
            folds[(start + j) % k].append(int(i))
        start = (start + len(rows)) % k
    return [np.array(sorted(f), dtype=int) for f in folds]


def train_rows(n: int, held_out: np.ndarray) -> np.ndarray:
    mask = np.ones(n, bool)
    mask[held_out] = False
    return np.flatnonzero(mask)


def fold_scores(oof_logits: np.ndarray, y: np.ndarray, folds: list[np.ndarray]) -> dict:
    """Accuracy and balanced accuracy per fold (mean, std), and the mean out-of-fold log loss."""
    from graft.heads.metrics import balanced_accuracy

    pred = oof_logits.argmax(1)
    acc = [float((pred[f] == y[f]).mean()) for f in folds]
    bal = [balanced_accuracy(y[f], pred[f], oof_logits.shape[1]) for f in folds]
    nll = float(nn.functional.cross_entropy(torch.from_numpy(oof_logits).double(), torch.from_numpy(y)).item())
    return {"accuracy": _spread(acc), "balanced_accuracy": _spread(bal), "log_loss": round(nll, 6)}


def best_row(rows: list[dict], score: str = "accuracy") -> dict:
    """Highest mean `score`; ties go to the lower log loss, then to the earlier row."""
    return min(rows, key=lambda r: (-r[score]["mean"], r["log_loss"], rows.index(r)))


def _spread(values: list[float]) -> dict:
    a = np.asarray(values, dtype=float)
    return {"mean": round(float(a.mean()), 6), "std": round(float(a.std()), 6), "folds": [round(v, 6) for v in a]}


