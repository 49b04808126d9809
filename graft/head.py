"""Train the new softmax layer on cached features: milliseconds per epoch, no backbone involved.

The head is one linear layer (logistic regression on the frozen features). Features are
standardised for a well-conditioned optimisation, and the standardisation is folded back into
the layer afterwards, so the saved head is a plain `nn.Linear` on raw backbone features. AdamW
with weight decay, mini-batches, early stopping on validation loss with the best epoch restored;
seeded, so the same features and seed give bit-identical weights.

With augmented views (features of shape (N, K, D)), each epoch draws one view per image.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn


@dataclass
class HeadConfig:
    epochs: int = 100
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 32
    label_smoothing: float = 0.1
    patience: int = 15  # epochs without a better validation loss before stopping; 0 = never stop
    seed: int = 0

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class HeadResult:
    head: nn.Linear
    best_epoch: int
    epochs_run: int
    history: dict = field(default_factory=dict)  # per epoch: train_loss, val_loss, val_accuracy


class HeadTrainer:
    """One epoch at a time, so callers can feed fresh features per epoch (views, benchmarks)."""

    def __init__(self, x_train, y_train, x_val, y_val, n_classes: int, cfg: HeadConfig | None = None):
        self.cfg = cfg = cfg or HeadConfig()
        self.gen = torch.Generator().manual_seed(cfg.seed)
        xt = torch.as_tensor(np.asarray(x_train), dtype=torch.float32)
        flat = xt.reshape(-1, xt.shape[-1])
        self.mean, self.std = flat.mean(0), flat.std(0).clamp_min(1e-6)
        self.x_train = (xt - self.mean) / self.std
        self.y_train = torch.as_tensor(np.asarray(y_train), dtype=torch.long)
        self.x_val = self.standardise(x_val)
        self.y_val = torch.as_tensor(np.asarray(y_val), dtype=torch.long)
        self.n_classes = n_classes
        self.layer = nn.Linear(xt.shape[-1], n_classes)
        nn.init.zeros_(self.layer.weight)  # logistic regression: zero is a fine, deterministic start
        nn.init.zeros_(self.layer.bias)
        self.opt = _FunctionalAdamW(list(self.layer.parameters()), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.history = {"train_loss": [], "val_loss": [], "val_accuracy": []}
        self.best = (math.inf, -1, copy.deepcopy(self.layer.state_dict()))
        self.epoch = 0

    def standardise(self, x) -> torch.Tensor:
        return (torch.as_tensor(np.asarray(x), dtype=torch.float32) - self.mean) / self.std

    def run_epoch(self, x_train: torch.Tensor | None = None) -> bool:
        """Train one epoch (on `x_train`, already standardised, if given); False = stop early."""
        cfg = self.cfg
        xt = self.x_train if x_train is None else x_train
        n = len(self.y_train)
        if xt.ndim == 3:  # augmented views: one per image this epoch
            xt = xt[torch.arange(n), torch.randint(xt.shape[1], (n,), generator=self.gen)]
        self.layer.train()
        order = torch.randperm(n, generator=self.gen)
        total = 0.0
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            loss = self.loss_fn(self.layer(xt[idx]), self.y_train[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            total += loss.item() * len(idx)
        val_loss, val_acc = self.validate()
        self.history["train_loss"].append(total / n)
        self.history["val_loss"].append(val_loss)
        self.history["val_accuracy"].append(val_acc)
        if val_loss < self.best[0] - 1e-6:
            self.best = (val_loss, self.epoch, copy.deepcopy(self.layer.state_dict()))
        self.epoch += 1
        return not (cfg.patience and self.epoch - 1 - self.best[1] >= cfg.patience)

    def validate(self) -> tuple[float, float]:
        self.layer.eval()
        with torch.no_grad():
            if not len(self.y_val):
                return self.history["train_loss"][-1] if self.history["train_loss"] else math.inf, float("nan")
            logits = self.layer(self.x_val)
            loss = nn.functional.cross_entropy(logits, self.y_val).item()
            return loss, (logits.argmax(1) == self.y_val).float().mean().item()

    def result(self) -> HeadResult:
        """The best epoch's layer, standardisation folded in."""
        self.layer.load_state_dict(self.best[2])
        return HeadResult(fold_standardisation(self.layer, self.mean, self.std), self.best[1] + 1,
                          self.epoch, self.history)


def train_head(x_train, y_train, x_val, y_val, n_classes: int, cfg: HeadConfig | None = None,
               *, progress: bool = False, on_epoch=None) -> HeadResult:
    """Train the new softmax layer with early stopping; returns the best epoch's layer.

    `on_epoch(epoch, scalars)`, if given, is called as each epoch ends (epoch counted from 1;
    scalars: train_loss, val_loss, val_accuracy, lr, epoch_s), for a log that grows as it runs.
    The features are in memory, so there is no data wait to report."""
    import time

    trainer = HeadTrainer(x_train, y_train, x_val, y_val, n_classes, cfg)
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
            bar.set_postfix(val_loss=f"{trainer.history['val_loss'][-1]:.3f}",
                            val_acc=f"{trainer.history['val_accuracy'][-1]:.3f}", refresh=False)
            if not go_on:
                break
    return trainer.result()


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
