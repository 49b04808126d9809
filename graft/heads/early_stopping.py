"""Early stopping on a validation loss: one rule for every AdamW loop in graft (the head on
cached features, the head's number of epochs chosen on folds, fine-tuning), so they cannot drift.

An epoch is better only when its loss is lower than the best so far by more than MIN_DELTA, so a
tie keeps the earlier, less trained epoch. After `patience` epochs without a better one training
stops (patience 0: never). With no validation photo (loss None) there is nothing to choose on:
every epoch runs and the last one is the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIN_DELTA = 1e-6


@dataclass
class EarlyStopping:
    patience: int  # epochs without a better validation loss before stopping; 0 = never stop
    best_loss: float = math.inf
    best_epoch: int = -1  # counted from 0; -1: none yet

    def improves(self, loss: float) -> bool:
        """Whether `loss` beats the best so far (a tie within MIN_DELTA does not)."""
        return loss < self.best_loss - MIN_DELTA

    def keep(self, epoch: int, loss: float) -> None:
        """Make `epoch`, at `loss`, the best so far."""
        self.best_loss, self.best_epoch = loss, epoch

    def update(self, epoch: int, loss: float | None) -> bool:
        """Record `epoch`'s validation loss; True when its weights are the ones to keep."""
        if loss is None:  # no validation photo: the latest epoch is the result
            self.best_epoch = epoch
            return True
        if self.improves(loss):
            self.keep(epoch, loss)
            return True
        return False

    def should_stop(self, epoch: int) -> bool:
        """Whether training stops after `epoch`: `patience` epochs since the best one."""
        return bool(self.patience) and epoch - self.best_epoch >= self.patience
