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


def train_head(x_train, y_train, x_val, y_val, n_classes: int, cfg: HeadConfig | None = None,
               *, progress: bool = False) -> HeadResult:
    cfg = cfg or HeadConfig()
    gen = torch.Generator().manual_seed(cfg.seed)
    xt = torch.as_tensor(np.asarray(x_train), dtype=torch.float32)
    yt = torch.as_tensor(np.asarray(y_train), dtype=torch.long)
    views = xt.ndim == 3
    flat = xt.reshape(-1, xt.shape[-1])
    mean, std = flat.mean(0), flat.std(0).clamp_min(1e-6)
    xv = (torch.as_tensor(np.asarray(x_val), dtype=torch.float32) - mean) / std
    yv = torch.as_tensor(np.asarray(y_val), dtype=torch.long)
    xt = (xt - mean) / std

    layer = nn.Linear(xt.shape[-1], n_classes)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    opt = torch.optim.AdamW(layer.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    plain_loss = nn.CrossEntropyLoss()
    history = {"train_loss": [], "val_loss": [], "val_accuracy": []}
    best = (math.inf, 0, copy.deepcopy(layer.state_dict()))
    n = len(yt)
    from tqdm.auto import tqdm

    bar = tqdm(range(cfg.epochs), desc="head", unit="epoch", disable=not progress, leave=False)
    epoch = 0
    for epoch in bar:
        layer.train()
        order = torch.randperm(n, generator=gen)
        x_epoch = xt[torch.arange(n), torch.randint(xt.shape[1], (n,), generator=gen)] if views else xt
        total = 0.0
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            loss = loss_fn(layer(x_epoch[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        layer.eval()
        with torch.no_grad():
            logits = layer(xv) if len(yv) else torch.zeros(0, n_classes)
            val_loss = plain_loss(logits, yv).item() if len(yv) else total / n
            val_acc = (logits.argmax(1) == yv).float().mean().item() if len(yv) else float("nan")
        history["train_loss"].append(total / n)
        history["val_loss"].append(val_loss)
        history["val_accuracy"].append(val_acc)
        bar.set_postfix(val_loss=f"{val_loss:.3f}", val_acc=f"{val_acc:.3f}")
        if val_loss < best[0] - 1e-6:
            best = (val_loss, epoch, copy.deepcopy(layer.state_dict()))
        elif cfg.patience and epoch - best[1] >= cfg.patience:
            break
    bar.close()
    layer.load_state_dict(best[2])
    return HeadResult(fold_standardisation(layer, mean, std), best[1] + 1, epoch + 1, history)


def fold_standardisation(layer: nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> nn.Linear:
    """W((x - m) / s) + b == (W / s) x + (b - (W / s) m): the same function on raw features."""
    out = nn.Linear(layer.in_features, layer.out_features)
    with torch.no_grad():
        w = layer.weight / std
        out.weight.copy_(w)
        out.bias.copy_(layer.bias - w @ mean)
    return out
