"""What a fine-tuning run is asked (FinetuneConfig), what it gives back (FinetuneResult), and the
two rules read from them before training: which stages train (plan_stages) and the learning rate
at each step (lr_factor: linear warm-up, then cosine decay)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from graft.errors import GraftError
from graft.heads.optimisation import Optimisation


@dataclass
class FinetuneConfig(Optimisation):
    """Batch size, weight decay, label smoothing and seed: see Optimisation. Patience is shorter
    than the head's: an epoch here costs minutes, not milliseconds."""

    strategy: str = "partial"  # "partial" or "full"
    train_stages: int = 2  # partial: how many of the last backbone stages train (or are replaced)
    new_hidden: tuple = ()  # replace the last `train_stages` stages by these hidden layers
    dropout: float = 0.2
    from_scratch: bool = False  # full: random initialisation instead of the pretrained weights
    epochs: int = 15
    lr: float = 1e-3  # the new top's learning rate
    backbone_lr_mult: float = 0.1  # pretrained layers learn at lr * this (1.0 from scratch)
    warmup_epochs: float = 1.0
    clip_grad_norm: float = 1.0
    patience: int = 5
    # K > 0: the frozen prefix's activations of K augmented views of each training photo are cached
    # and each epoch trains on one of them (graft.finetune.boundary_views); 0: augment on the fly
    boundary_views: int = 0
    # "auto": bfloat16 autocast where the device computes it natively (graft.finetune.precision)
    precision: str = "auto"

    def to_json(self) -> dict:
        d = super().to_json()
        d["new_hidden"] = list(self.new_hidden)
        return d


@dataclass
class FinetuneResult:
    model: nn.Module  # the Classifier, best epoch's weights
    best_epoch: int
    epochs_run: int
    history: dict
    timings: dict
    boundary_cache: bool
    resumed_from: int | None = None


def plan_stages(backbone, cfg: FinetuneConfig) -> tuple[int, int | None]:
    """-> (k frozen stages, cut). Checks the request against the backbone's stages."""
    n = len(backbone.stage_names)
    if cfg.strategy not in ("partial", "full"):
        raise GraftError(f"fine-tuning trains 'partial' or 'full', not {cfg.strategy!r}")
    if cfg.from_scratch and cfg.strategy != "full":
        raise GraftError("--from-scratch trains every layer from random weights: use it with --strategy full")
    if cfg.strategy == "full":
        if cfg.new_hidden:
            raise GraftError("--new-hidden replaces the last stages; use it with --strategy partial")
        return 0, None
    if not 1 <= cfg.train_stages <= n - 1:
        raise GraftError(f"--train-stages must be between 1 and {n - 1} for {backbone.arch} "
                         f"(its stages: {', '.join(backbone.stage_names)})")
    if not backbone.sequential:
        raise GraftError(f"partial fine-tuning needs the stage-by-stage forward of the backbone, which graft "
                         f"does not know for {backbone.arch}; use --strategy full or head")
    k = n - cfg.train_stages
    return k, (k if cfg.new_hidden else None)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1 over `warmup` steps, then cosine decay to 0 at `total`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
