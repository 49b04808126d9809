"""The textbook linear probe: multinomial logistic regression on frozen features, full batch,
solved by L-BFGS, with its L2 strength chosen by stratified k-fold cross-validation.

Why next to the AdamW head: on a few hundred photos a convex problem solved to convergence has
no epochs, learning rate or early stopping to choose, so nothing is tuned on the photos that are
reported; the one knob, the L2 strength, is chosen on folds of the training photos. The result
is an `nn.Linear` on raw backbone features (the standardisation is folded in), the same shape
and file format as graft.heads.softmax's head, so saving and prediction do not change.

Objective, on standardised features z: mean (class-weighted) cross-entropy + strength/2 * |W|^2
(the bias is not penalised). Solved from zero (or along a path of strengths, each from the
previous solution), in float64 unless the problem is big, so the same photos give the same head.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from graft.heads.softmax import fold_standardisation

# Log grid of L2 strengths on standardised features, half a decade apart: 1e-3 (weak) .. 10 (strong)
STRENGTHS: tuple[float, ...] = tuple(float(s) for s in np.logspace(-3, 1, 9))


@dataclass
class ProbeFit:
    head: nn.Linear  # on raw features
    strength: float
    iterations: int


@dataclass
class ProbeResult:
    """A probe fitted on all the photos it was given, with the strength cross-validation chose."""

    head: nn.Linear
    strength: float
    cv: dict  # the chosen strength's row: accuracy/balanced_accuracy {mean, std, folds}, log_loss
    table: list[dict] = field(default_factory=list)  # one row per strength tried
    folds: int = 0
    oof_logits: np.ndarray | None = None  # the chosen strength's out-of-fold logits (N, C)


# Problems above this many multiply-adds per evaluation (rows x features x classes) are solved in
# float32: half the time, and the solution differs far below what changes a prediction.
FLOAT64_UP_TO = 50_000_000


def _design(x, y, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features as float64 rows (float32 for big problems); augmented views (N, K, D) become
    N*K rows with repeated labels."""
    x = np.asarray(x)
    big = int(np.prod(x.shape)) * n_classes > FLOAT64_UP_TO
    x = torch.as_tensor(x, dtype=torch.float32 if big else torch.float64)
    y = torch.as_tensor(np.asarray(y), dtype=torch.long)
    if x.ndim == 3:
        y = y.repeat_interleave(x.shape[1])
        x = x.reshape(-1, x.shape[-1])
    return x, y


MULTI_THREAD_FROM = 64_000_000  # rows x features (50k photos of a 1280-wide backbone)


@contextlib.contextmanager
def small_problem_threads(n: int, d: int):
    """One thread unless the problem is big: a probe is thousands of small ops (rows x 1280 by
    1280 x classes), and a multi-threaded op waits for every core it split on. Measured on this
    2-core machine with one other job running, the 5-fold probe on 10,000 x 1280 features took
    7-9 s on one thread and 34-58 s on two."""
    if n * d > MULTI_THREAD_FROM:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Problem:
    """Standardised design, labels and per-row weights of one fit (reused along a strength path)."""

    def __init__(self, x, y, n_classes: int, class_weight=None):
        x, self.y = _design(x, y, n_classes)
        self.mean = x.mean(0)
        self.std = x.std(0).clamp_min(1e-6) if len(x) > 1 else torch.ones_like(self.mean)
        self.z = (x - self.mean) / self.std
        self.n_classes = n_classes
        sw = torch.ones(len(self.y), dtype=x.dtype)
        if class_weight is not None:
            sw = torch.as_tensor(np.asarray(class_weight), dtype=x.dtype)[self.y]
        self.sw = sw / sw.sum()  # == cross_entropy(weight=...)'s weighted mean

    def solve(self, strength: float, init=None, *, max_iter: int = 500, tolerance: float = 1e-5):
        """-> (W, b, iterations) minimising the objective, from `init` (W, b) or zero.

        The gradient is written out (softmax minus one-hot), so each L-BFGS evaluation is a
        handful of ops and no autograd graph."""
        d, c, z, y, sw = self.z.shape[1], self.n_classes, self.z, self.y, self.sw
        w = torch.zeros(c, d, dtype=z.dtype) if init is None else init[0].clone()
        b = torch.zeros(c, dtype=z.dtype) if init is None else init[1].clone()
        rows = torch.arange(len(y))
        opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=10, tolerance_grad=tolerance,
                                tolerance_change=1e-10, line_search_fn="strong_wolfe")

        def closure():
            logp = torch.log_softmax(z @ w.T + b, 1)
            loss = -(sw * logp[rows, y]).sum() + 0.5 * strength * (w * w).sum()
            p = logp.exp_()
            p[rows, y] -= 1
            p *= sw[:, None]
            w.grad = p.T @ z + strength * w
            b.grad = p.sum(0)
            return loss

        opt.step(closure)
        return w, b, int(opt.state[w]["n_iter"])

    def head(self, w, b) -> nn.Linear:
        layer = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            layer.weight.copy_(w)
            layer.bias.copy_(b)
        return fold_standardisation(layer, self.mean.float(), self.std.float())


def fit_probe(x, y, n_classes: int, strength: float, *, class_weight=None) -> ProbeFit:
    """Minimise the regularised cross-entropy with torch's L-BFGS (strong Wolfe line search)."""
    x = np.asarray(x)
    with small_problem_threads(int(np.prod(x.shape[:-1])), x.shape[-1]):
        prob = _Problem(x, y, n_classes, class_weight)
        w, b, iters = prob.solve(strength)
        return ProbeFit(prob.head(w, b), float(strength), iters)


def train_probe(x, y, n_classes: int, *, strengths=STRENGTHS, k: int = 5, keys=None, seed: int = 0,
                class_weight=None, score: str | None = None) -> ProbeResult:
    """Choose the L2 strength by stratified k-fold CV on (x, y), then refit on all of (x, y).

    In each fold the strengths are solved from the strongest to the weakest, each starting from
    the previous solution (a regularisation path: a few iterations each instead of a cold
    start). `keys` (content digests, one per row) make the folds depend on the photos, not
    their order. `score`: what picks the strength ("accuracy", or "balanced_accuracy", the
    default when `class_weight` is given); ties go to the lower cross-validated log loss, then
    to the stronger regularisation.
    """
    from graft.heads.folds import best_row, fold_scores, stratified_folds, train_rows

    score = score or ("balanced_accuracy" if class_weight is not None else "accuracy")
    x = np.asarray(x)
    y = np.asarray(y, dtype=int)
    path = sorted((float(s) for s in strengths), reverse=True)
    folds = stratified_folds(y, k, keys=keys, seed=seed)
    oof = np.zeros((len(path), len(y), n_classes), np.float32)
    with small_problem_threads(int(np.prod(x.shape[:-1])), x.shape[-1]):
        for held in folds:
            tr = train_rows(len(y), held)
            prob = _Problem(x[tr], y[tr], n_classes, class_weight)
            held_x = torch.from_numpy(np.ascontiguousarray(x[held][:, 0] if x.ndim == 3 else x[held],
                                                           dtype=np.float32))
            init = None
            for j, s in enumerate(path):
                w, b, _ = prob.solve(s, init)
                with torch.no_grad():
                    oof[j, held] = prob.head(w, b)(held_x).numpy()
                init = (w, b)
        rows = [{"name": f"lbfgs l2={s:.3g}", "solver": "lbfgs", "strength": s, **fold_scores(oof[j], y, folds)}
                for j, s in enumerate(path)]
        best = best_row(rows, score)
        prob = _Problem(x, y, n_classes, class_weight)
        w, b, _ = prob.solve(best["strength"])
        head = prob.head(w, b)
    return ProbeResult(head, best["strength"], best, rows, len(folds), oof[rows.index(best)])
