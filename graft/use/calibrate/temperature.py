"""Temperature scaling (Guo et al. 2017): the logits divided by one T before the softmax, T fitted
so that "0.9" means right about 9 times in 10."""

from __future__ import annotations

import math

import numpy as np

from graft.errors import GraftError


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
    """softmax(logits / T) in numpy, float64: what a prediction applies (no torch needed)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
