"""Every setting of a training run and its default, in one place: `TrainConfig`.

`graft.train(...)` and `graft train ...` both build one. A setting left at None means "what the
trainer that runs uses": the head on cached features costs milliseconds an epoch, so it runs
long and waits long (HeadConfig), fine-tuning costs minutes an epoch (FinetuneConfig).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import GraftError
from ..finetune import FinetuneConfig
from ..head import HeadConfig
from ..strategy import StrategyChoice, check_request
from .log import parse_log_kinds, require_tensorboard

# The augmentation preset of cached views of a frozen backbone when none is asked for: on
# hymenoptera light views beat clean features where standard ones only matched them
# (bench/aug_views.py). Fine-tuning uses graft.augment's DEFAULT_PRESET.
VIEWS_PRESET = "light"


@dataclass(frozen=True)
class TrainConfig:
    backbone: object = "default"  # "default", "timm:<name>", "tv:<name>" or a built Backbone
    weights: object = None  # a local weights file for the backbone
    strategy: str = "auto"  # "auto", "head", "partial" or "full" (graft.strategy)
    val_split: float = 0.2  # share of each class held out when the photos have no val/
    cache_dir: object = None  # None: graft.cache.layout.default_cache_dir()
    epochs: int | None = None  # None: the trainer's own
    lr: float | None = None  # None: the trainer's own (the new top's; pretrained layers get less)
    weight_decay: float = 1e-2
    label_smoothing: float = 0.1
    patience: int | None = None  # epochs without a lower validation loss; 0 = never stop; None: the trainer's
    batch_size: int = 32
    seed: int = 0
    workers: int | None = None  # loader processes; None: chosen from the machine
    augment: str | None = None  # preset; None: see preset()
    aug: object = None  # knob overrides: "k=v,..." text, a mapping, or a .json/.toml file
    aug_views: int = 0  # head: K cached augmented views of every training photo
    train_stages: int = 2  # partial: how many of the last stages train
    new_hidden: tuple = ()  # partial: replace those stages by new hidden layers of these sizes
    from_scratch: bool = False  # full: random initialisation
    resume: bool = False  # continue a killed fine-tuning run
    boundary_cache: bool = True  # cache the frozen stages' activations when nothing is augmented
    aug_device: str = "workers"  # where flips and colour ops run when fine-tuning: workers, cpu, cuda
    decode_once: bool = True  # keep decoded photos in the cache so later epochs skip decoding
    balance: str = "auto"  # "auto": weight classes equally when the largest has > 3x the smallest; "none"
    solver: str = "auto"  # the head's solver: "auto" (chosen by CV on the training photos), "lbfgs", "adamw"
    inner_split: float = 0.15  # fine-tuning: share of the TRAINING photos (by content hash) early stopping watches
    budget: float = 300.0  # --backbone auto: seconds of feature extraction the candidates may cost
    final: bool = False  # deployment model: the validation photos are trained on too (no held-out figure)
    report: bool = True  # write RUN/report.html
    log: object = "csv"  # per-epoch log: "csv" (RUN/log.csv, always written) or "tensorboard" (also RUN/tensorboard/)
    progress: bool = True  # progress bars

    def __post_init__(self):
        check_request(self.strategy, from_scratch=self.from_scratch)  # before any photo is read
        object.__setattr__(self, "new_hidden", tuple(self.new_hidden or ()))
        if self.balance not in ("auto", "none"):
            raise GraftError(f"balance must be auto or none, not {self.balance!r}")
        if self.solver not in ("auto", "lbfgs", "adamw"):
            raise GraftError(f"solver must be auto, lbfgs or adamw, not {self.solver!r}")
        object.__setattr__(self, "log", parse_log_kinds(self.log))
        if "tensorboard" in self.log:
            require_tensorboard()

    def solvers(self) -> tuple[str, ...]:
        from ..selection import SOLVERS

        return SOLVERS if self.solver == "auto" else (self.solver,)

    def preset(self, use: str) -> str:
        """The augmentation preset for `use`: "finetune" or "views"."""
        if self.augment:
            return self.augment
        if use == "views":
            return VIEWS_PRESET
        from ..augment import DEFAULT_PRESET  # here: graft.augment imports torchvision (seconds)

        return DEFAULT_PRESET

    def head_config(self) -> HeadConfig:
        return HeadConfig(epochs=self.epochs or HeadConfig.epochs, lr=self.lr or HeadConfig.lr,
                          weight_decay=self.weight_decay, batch_size=self.batch_size,
                          label_smoothing=self.label_smoothing,
                          patience=HeadConfig.patience if self.patience is None else self.patience, seed=self.seed)

    def finetune_config(self, choice: StrategyChoice) -> FinetuneConfig:
        return FinetuneConfig(strategy=choice.strategy, train_stages=choice.train_stages, new_hidden=self.new_hidden,
                              from_scratch=self.from_scratch, epochs=self.epochs or FinetuneConfig.epochs,
                              batch_size=self.batch_size, lr=self.lr or FinetuneConfig.lr,
                              weight_decay=self.weight_decay, label_smoothing=self.label_smoothing,
                              patience=FinetuneConfig.patience if self.patience is None else self.patience,
                              seed=self.seed)


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict

    @property
    def val_accuracy(self) -> float:
        return self.metrics["val_accuracy"]
