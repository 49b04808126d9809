"""The settings every AdamW loop in graft shares, declared once: the head on cached features
(graft.heads.softmax.HeadConfig) and fine-tuning (graft.finetune.config.FinetuneConfig) extend
`Optimisation`, each with its own epochs and learning rate."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Optimisation:
    batch_size: int = 32
    weight_decay: float = 0.01  # AdamW's
    label_smoothing: float = 0.1
    patience: int = 15  # epochs without a lower validation loss before stopping; 0 = never (early_stopping.py)
    seed: int = 0

    def to_json(self) -> dict:
        return asdict(self)
