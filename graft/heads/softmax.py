"""Train the new softmax layer on cached features: milliseconds per epoch, no backbone involved.

The head is one linear layer (logistic regression on the frozen features). Features are
standardised for a well-conditioned optimisation, and the standardisation is folded back into
the layer afterwards, so the saved head is a plain `nn.Linear` on raw backbone features. AdamW
with weight decay, mini-batches, early stopping on validation loss with the best epoch restored
(graft.heads.early_stopping: fine-tuning's rule too); seeded, so the same features and seed give
bit-identical weights.

With augmented views (features of shape (N, K, D)), each epoch draws one view per image.

With no validation photo there is nothing to choose an epoch on: every epoch runs (no early
stopping) and the last one is kept, and the history records null for the validation figures.
Picking the epoch of the lowest training loss instead would pick the most overfit one.

Memory: features up to a budget (GRAFT_HEAD_MEMORY_MB, default 512) are held in memory, as
always. Beyond it they are streamed: `x_train`/`x_val` may be memory-mapped arrays or
graft.cache.rows.FeatureRows (rows left in the feature cache); the standardisation's moments
are accumulated chunk by chunk, and each epoch reads its shuffled order in chunks of a quarter of
the budget, standardising only that chunk. The mini-batches, their order and the random draws
are the same as in memory; only the moments' summation order differs (float64 chunks instead of
one float32 reduction), so streamed weights equal in-memory ones to rounding, not bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from graft.heads.early_stopping import EarlyStopping
from graft.heads.optimisation import Optimisation


@dataclass
class HeadConfig(Optimisation):
    """Batch size, weight decay, label smoothing, patience (15) and seed: see Optimisation."""

    epochs: int = 100
    lr: float = 1e-3


@dataclass
class HeadResult:
    head: nn.Linear
    best_epoch: int
    epochs_run: int
    history: dict = field(default_factory=dict)  # per epoch: train_loss, val_loss, val_accuracy


@contextlib.contextmanager
def one_thread():
    """Run the head's steps on one intra-op thread. A step is a (32 x D) @ (D x classes) product:
    far too small to split, and on a busy machine a second thread only makes each op wait for a
    descheduled peer (measured here: 3.1 s per epoch of 800 photos on 2 threads, 0.16 s on one)."""
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def memory_budget(budget: int | None = None) -> int:
    """Bytes of features the head holds in memory before it streams them (see module docstring)."""
    if budget is not None:
        return int(budget)
    return int(float(os.environ.get("GRAFT_HEAD_MEMORY_MB", "512")) * (1 << 20))


def _nbytes(x) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * 4
    shape = getattr(x, "shape", None)
    return int(np.prod(shape)) * 4 if shape is not None else np.asarray(x).size * 4


def _rows(x, flat_rows: np.ndarray) -> np.ndarray:
    """Rows `flat_rows` of x viewed as (-1, D), read from wherever x keeps them."""
    if hasattr(x, "take") and not isinstance(x, (np.ndarray, torch.Tensor)):
        return x.take(flat_rows)  # graft.cache.rows.FeatureRows
    a = x.numpy() if isinstance(x, torch.Tensor) else x
    return np.asarray(a.reshape(-1, a.shape[-1])[flat_rows], dtype=np.float32)


def _moments(x, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased std of x's rows (views flattened), one chunk in memory at a time
    (Chan et al.'s pairwise update, in float64)."""
    dim = x.shape[-1]
    total = int(np.prod(x.shape[:-1]))
    count, mean, m2 = 0, np.zeros(dim), np.zeros(dim)
    for start in range(0, total, chunk):
        a = _rows(x, np.arange(start, min(start + chunk, total))).astype(np.float64)
        nb, mb = len(a), a.mean(0)
        m2b = ((a - mb) ** 2).sum(0)
        delta, tot = mb - mean, count + nb
        mean = mean + delta * nb / tot
        m2 = m2 + m2b + delta**2 * count * nb / tot
        count = tot
    std = np.sqrt(m2 / (count - 1)) if count > 1 else np.full(dim, np.nan)
    return torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(std.astype(np.float32)).clamp_min(1e-6)


class HeadTrainer:
    """One epoch at a time, so callers can feed fresh features per epoch (views, benchmarks)."""

    def __init__(self, x_train, y_train, x_val, y_val, n_classes: int, cfg: HeadConfig | None = None,
                 *, budget: int | None = None, class_weight=None):
        """`class_weight` (n_classes,): per-class loss weights, so uneven classes count equally."""
        self.cfg = cfg = cfg or HeadConfig()
        self.gen = torch.Generator().manual_seed(cfg.seed)
        budget = memory_budget(budget)
        self.streamed = _nbytes(x_train) + _nbytes(x_val) > budget
        if self.streamed:
            dim = x_train.shape[-1]
            # a quarter of the budget: the chunk, its standardised copy and temporaries fit in it
            self.chunk = max(cfg.batch_size, budget // 4 // (dim * 4) // cfg.batch_size * cfg.batch_size)
            self.mean, self.std = _moments(x_train, self.chunk)
            self.x_train, self.x_val = x_train, x_val  # left where they are; read per chunk
        else:
            xt = torch.as_tensor(np.asarray(x_train), dtype=torch.float32)
            dim = xt.shape[-1]
            flat = xt.reshape(-1, dim)
            self.mean, self.std = flat.mean(0), flat.std(0).clamp_min(1e-6)
            self.x_train = (xt - self.mean) / self.std
            self.x_val = self.standardise(x_val)
        self.y_train = torch.as_tensor(np.asarray(y_train), dtype=torch.long)
        self.y_val = torch.as_tensor(np.asarray(y_val), dtype=torch.long)
        self.n_classes = n_classes
        self.layer = nn.Linear(dim, n_classes)
        nn.init.zeros_(self.layer.weight)  # logistic regression: zero is a fine, deterministic start
        nn.init.zeros_(self.layer.bias)
        self.opt = _FunctionalAdamW(list(self.layer.parameters()), lr=cfg.lr, weight_decay=cfg.weight_decay)
        weight = None if class_weight is None else torch.as_tensor(np.asarray(class_weight), dtype=torch.float32)
        self.loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
        self.history = {"train_loss": [], "val_loss": [], "val_accuracy": []}
        self.stopping = EarlyStopping(cfg.patience)
        self.best_weights = copy.deepcopy(self.layer.state_dict())  # kept while no epoch is better
        self.epoch = 0

    def standardise(self, x) -> torch.Tensor:
        return (torch.as_tensor(np.asarray(x), dtype=torch.float32) - self.mean) / self.std

    def run_epoch(self, x_train: torch.Tensor | None = None) -> bool:
        """Train one epoch (on `x_train`, already standardised, if given); False = stop early."""
        with one_thread():
            return self._run_epoch(x_train)

    def _run_epoch(self, x_train: torch.Tensor | None) -> bool:
        cfg = self.cfg
        xt = self.x_train if x_train is None else x_train
        n = len(self.y_train)
        streamed = self.streamed and x_train is None
        views = None
        if xt.ndim == 3:  # augmented views: one per image this epoch
            views = torch.randint(xt.shape[1], (n,), generator=self.gen)
            if not streamed:
                xt = xt[torch.arange(n), views]
        self.layer.train()
        order = torch.randperm(n, generator=self.gen)
        total = 0.0
        if not streamed:
            for start in range(0, n, cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                total += self._step(xt[idx], self.y_train[idx])
        else:  # the same batches in the same order, read and standardised a chunk at a time
            for c0 in range(0, n, self.chunk):
                part = order[c0 : c0 + self.chunk]
                flat = (part * xt.shape[1] + views[part]) if views is not None else part
                xc = self.standardise_rows(xt, flat.numpy())
                yc = self.y_train[part]
                for start in range(0, len(part), cfg.batch_size):
                    total += self._step(xc[start : start + cfg.batch_size], yc[start : start + cfg.batch_size])
        val_loss, val_acc = self.validate()
        self.history["train_loss"].append(total / n)
        self.history["val_loss"].append(val_loss)
        self.history["val_accuracy"].append(val_acc)
        if self.stopping.update(self.epoch, val_loss):
            self.best_weights = copy.deepcopy(self.layer.state_dict())
        self.epoch += 1
        return not self.stopping.should_stop(self.epoch - 1)

    def _step(self, xb: torch.Tensor, yb: torch.Tensor) -> float:
        loss = self.loss_fn(self.layer(xb), yb)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.item() * len(yb)

    def standardise_rows(self, x, flat_rows: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(_rows(x, flat_rows)) - self.mean) / self.std

    def validate(self) -> tuple[float | None, float | None]:
        """(loss, accuracy) on the validation features; (None, None) when there are none."""
        if not len(self.y_val):
            return None, None
        self.layer.eval()
        with torch.no_grad():
            if self.streamed:
                n, loss, correct = len(self.y_val), 0.0, 0
                for c0 in range(0, n, self.chunk):
                    yc = self.y_val[c0 : c0 + self.chunk]
                    logits = self.layer(self.standardise_rows(self.x_val, np.arange(c0, c0 + len(yc))))
                    loss += nn.functional.cross_entropy(logits, yc, reduction="sum").item()
                    correct += int((logits.argmax(1) == yc).sum())
                return loss / n, float(np.float32(correct) / np.float32(n))  # as a float32 mean gives
            logits = self.layer(self.x_val)
            loss = nn.functional.cross_entropy(logits, self.y_val).item()
            return loss, (logits.argmax(1) == self.y_val).float().mean().item()

    def result(self) -> HeadResult:
        """The best epoch's layer, standardisation folded in."""
        self.layer.load_state_dict(self.best_weights)
        return HeadResult(fold_standardisation(self.layer, self.mean, self.std), self.stopping.best_epoch + 1,
                          self.epoch, self.history)


def train_head(x_train, y_train, x_val, y_val, n_classes: int, cfg: HeadConfig | None = None,
               *, progress: bool = False, budget: int | None = None, on_epoch=None) -> HeadResult:
    """Train the new softmax layer with early stopping; returns the best epoch's layer.

    `on_epoch(epoch, scalars)`, if given, is called as each epoch ends (epoch counted from 1;
    scalars: train_loss, val_loss, val_accuracy, lr, epoch_s), for a log that grows as it runs."""
    import time

    trainer = HeadTrainer(x_train, y_train, x_val, y_val, n_classes, cfg, budget=budget)
    from tqdm.auto import tqdm

    with tqdm(total=trainer.cfg.epochs, desc="head", unit="epoch", disable=not progress, leave=False) as bar:
        for _ in range(trainer.cfg.epochs):
            t0 = time.perf_counter()
            go_on = trainer.run_epoch()
            if on_epoch is not None:
                h = trainer.history
                on_epoch(trainer.epoch, {"train_loss": h["train_loss"][-1], "val_loss": h["val_loss"][-1],
                                         "val_accuracy": h["val_accuracy"][-1], "lr": trainer.cfg.lr,
                                         "epoch_s": time.perf_counter() - t0})
            bar.update(1)
            loss, acc = trainer.history["val_loss"][-1], trainer.history["val_accuracy"][-1]
            if loss is not None:
                bar.set_postfix(val_loss=f"{loss:.3f}", val_acc=f"{acc:.3f}", refresh=False)
            if not go_on:
                break
    return trainer.result()


def predict_logits(layer: nn.Module, x, *, budget: int | None = None) -> np.ndarray:
    """`layer` over the rows of x (N, D) as float32 logits, a chunk at a time when x is over the budget."""
    n = len(x)
    out_features = layer.out_features if isinstance(layer, nn.Linear) else None
    chunk = n if _nbytes(x) <= memory_budget(budget) else max(1, memory_budget(budget) // 4 // (x.shape[-1] * 4))
    parts = []
    with torch.no_grad():
        for c0 in range(0, n, max(chunk, 1)):
            rows = _rows(x, np.arange(c0, min(c0 + chunk, n)))
            parts.append(layer(torch.from_numpy(rows)).float().numpy())
    if not parts:
        return np.zeros((0, out_features or 0), np.float32)
    return np.concatenate(parts)


def predict_labels(layer: nn.Module, x, *, budget: int | None = None) -> np.ndarray:
    """argmax of `layer` over the rows of x (N, D), a chunk at a time when x is over the budget."""
    return predict_logits(layer, x, budget=budget).argmax(1) if len(x) else np.zeros(0, dtype=int)


class _FunctionalAdamW:
    """torch's AdamW update (torch.optim.adamw.adamw, the function its class calls) with the state
    kept here. Why not the class: constructing any torch.optim optimizer imports torch._dynamo,
    1-2 s per process here, which would be most of a warm-cache `graft train`; the update itself
    is identical (CPU, single-tensor path)."""

    def __init__(self, params, *, lr: float, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.weight_decay, self.betas, self.eps = params, lr, weight_decay, betas, eps
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.steps = [torch.tensor(0.0) for _ in params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        from torch.optim.adamw import adamw

        adamw(self.params, [p.grad for p in self.params], self.exp_avg, self.exp_avg_sq, [], self.steps,
              foreach=False, capturable=False, differentiable=False, fused=None, grad_scale=None,
              found_inf=None, amsgrad=False, beta1=self.betas[0], beta2=self.betas[1], lr=self.lr,
              weight_decay=self.weight_decay, eps=self.eps, maximize=False)


def make_head(in_features: int, n_classes: int, hidden=(), dropout: float = 0.2) -> nn.Module:
    """The new top: a linear softmax layer, or new hidden layers (ReLU + dropout) before it."""
    if not hidden:
        return nn.Linear(in_features, n_classes)
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Dropout(dropout), nn.Linear(width, int(h)), nn.ReLU(inplace=True)]
        width = int(h)
    layers += [nn.Dropout(dropout), nn.Linear(width, n_classes)]
    return nn.Sequential(*layers)


def head_spec(head: nn.Module) -> dict:
    """What rebuilds `head` (recorded in model.json)."""
    if isinstance(head, nn.Linear):
        return {"type": "linear", "in_features": head.in_features, "out_features": head.out_features}
    linears = [m for m in head if isinstance(m, nn.Linear)]
    dropout = next((m.p for m in head if isinstance(m, nn.Dropout)), 0.0)
    return {"type": "mlp", "in_features": linears[0].in_features, "out_features": linears[-1].out_features,
            "hidden": [m.out_features for m in linears[:-1]], "dropout": dropout}


def head_from_spec(spec: dict) -> nn.Module:
    return make_head(spec["in_features"], spec["out_features"], spec.get("hidden", ()), spec.get("dropout", 0.0))


def fold_standardisation(layer: nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> nn.Linear:
    """W((x - m) / s) + b == (W / s) x + (b - (W / s) m): the same function on raw features."""
    out = nn.Linear(layer.in_features, layer.out_features)
    with torch.no_grad():
        w = layer.weight / std
        out.weight.copy_(w)
        out.bias.copy_(layer.bias - w @ mean)
    return out
