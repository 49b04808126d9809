"""The head trained without validation features (issue 14): every epoch run, the last one kept."""

from __future__ import annotations

import numpy as np
import torch




def test_the_head_without_validation_features_keeps_the_last_epoch():
    from graft.heads.softmax import HeadConfig, HeadTrainer, fold_standardisation

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 8)).astype(np.float32), np.arange(12) % 3
    trainer = HeadTrainer(x, y, np.zeros((0, 8), np.float32), [], 3, HeadConfig(epochs=9, patience=2))
    while trainer.epoch < 9:
        assert trainer.run_epoch()  # never stops early
        assert trainer.validate() == (None, None)
    last = fold_standardisation(trainer.layer, trainer.mean, trainer.std)
    res = trainer.result()
    assert res.best_epoch == 9 and res.epochs_run == 9
    assert torch.equal(res.head.weight, last.weight) and torch.equal(res.head.bias, last.bias)
    assert res.history["val_loss"] == [None] * 9 and len(set(res.history["train_loss"])) == 9
