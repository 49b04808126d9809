"""Novelty: how unlike the training photos a photo is. A softmax must always pick one of its
classes, and on a photo of something else it is often *more* confident than on real ones, so
confidence alone cannot say "neither". The novelty of a photo is the cosine distance from its
backbone features to the k-th nearest training photo's (deep nearest neighbours, Sun et al. 2022)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from graft.errors import GraftError

if TYPE_CHECKING:  # torch is imported by the functions that compute with tensors: using a
    import torch  # calibration on an exported model's outputs needs none


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Each row scaled to length 1 (a zero row stays zero): a dot product is then a cosine."""
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
        self.reference = unit_rows(reference.float())
        self.k = k
        self.threshold = threshold

    def distance(self, features: torch.Tensor) -> np.ndarray:
        return knn_distance(unit_rows(features.float()), self.reference, self.k)


def reference_k(n: int) -> int:
    """The k of "k-th nearest" for n reference photos: one per hundred, from 1 to 10."""
    return max(1, min(10, n // 100))


def reference_rows(ok, n_train: int, cap: int) -> np.ndarray:
    """The readable training photos (rows 0..n_train-1, `ok` marks the readable) the novelty
    check compares with: all, or of more than `cap`, those among `cap` drawn with seed 0."""
    if n_train <= cap:
        drawn = np.arange(n_train)
    else:
        drawn = np.sort(np.random.default_rng(0).choice(n_train, cap, replace=False))
    return np.array([i for i in drawn if ok[i]], dtype=int)


class TrainingReference:
    """The training photos as the novelty check's reference, fitted from `feats[rows]`.

    `stored`: the features calibration.safetensors holds (unit rows, float16). `of(rows)`: the
    novelty of any rows of `feats`, each photo's distance to the k-th nearest reference photo
    other than itself, as a new photo like it would score (a reference photo is left out of its
    own neighbours). Left out, it is compared with one reference photo fewer than a new photo
    is, so its distance is if anything the larger: a threshold chosen on these errs towards
    keeping new photos, never towards refusing them.
    """

    def __init__(self, feats: np.ndarray, rows: np.ndarray):
        import torch

        if len(rows) < 2:
            raise GraftError("novelty needs at least two readable training photos; pass novelty=False to skip it")
        self.feats = feats
        self.stored = unit_rows(torch.from_numpy(np.ascontiguousarray(feats[rows])).float()).half().contiguous()
        self.k = reference_k(len(self.stored))
        self.unit = unit_rows(self.stored.float())  # exactly what Novelty compares new photos with
        self.leave_one_out = knn_distance(self.unit, self.unit, self.k, leave_one_out=True)
        self.position = {int(r): j for j, r in enumerate(rows)}  # a reference row -> its place in `stored`

    def of(self, rows) -> np.ndarray:
        import torch

        out = np.empty(len(rows))
        missing = [j for j, i in enumerate(rows) if int(i) not in self.position]
        for j, i in enumerate(rows):
            if int(i) in self.position:
                out[j] = self.leave_one_out[self.position[int(i)]]
        if missing:
            queries = unit_rows(torch.from_numpy(np.ascontiguousarray(self.feats[np.asarray(rows)[missing]])).float())
            out[missing] = knn_distance(queries, self.unit, self.k)
        return out

    def summary(self) -> dict:
        """calibration.json's novelty entry, less what is chosen later (threshold, quantile) and
        the file's name and hash (graft.use.calibrate.store.write_reference)."""
        loo = self.leave_one_out
        return {"method": "knn-cosine", "k": self.k, "threshold": None, "quantile": None,
                "n_reference": len(self.stored),
                "reference_distance": {"median": float(np.median(loo)), "max": float(loo.max())}}
