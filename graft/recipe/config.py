"""Every setting of a training run and its default, in one place: `TrainConfig`.

`graft.train(...)` and `graft train ...` both build one. A setting left at None means "what the
trainer that runs uses": the head on cached features costs milliseconds an epoch, so it runs
long and waits long (HeadConfig), fine-tuning costs minutes an epoch (FinetuneConfig).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from graft.errors import GraftError

from graft.finetune.loop import FinetuneConfig
from graft.heads.softmax import HeadConfig
from graft.recipe.strategy import StrategyChoice, check_request
from graft.recipe.log import parse_log_kinds, require_tensorboard

# The augmentation preset of cached views of a frozen backbone when none is asked for: on
# hymenoptera light views beat clean features where standard ones only matched them
# (bench/aug_views.py). Fine-tuning uses graft.augment's DEFAULT_PRESET.
VIEWS_PRESET = "light"

# --aug-views auto (the default): whether K cached augmented views help the head is decided by
# cross-validation on the training photos (with and without them, same folds). It is weighed
# only where that can tell and pays: a head run whose smallest class has at least
# AUTO_VIEWS_MIN_PER_CLASS training photos (with fewer, 5-fold CV cannot tell a gain of a photo or
# two from noise) and whose training set has at most AUTO_VIEWS_MAX_PHOTOS (their extraction,
# K forward passes a photo, stays within a few minutes on 2 cores: ask for --aug-views K beyond).
# Measured: hymenoptera (191 training photos) CV 0.969 without, 0.958 with 4 views: not used,
# 5 s more cold; the 12-species flowers gained 1.7 points held out from views.
AUTO_VIEWS = 4
AUTO_VIEWS_MIN_PER_CLASS = 20
AUTO_VIEWS_MAX_PHOTOS = 1000


@dataclass(frozen=True)
class TrainConfig:
    backbone: object = "default"  # "default", "timm:<name>", "tv:<name>" or a built Backbone
    weights: object = None  # a local weights file for the backbone
    strategy: str = "auto"  # "auto", "head", "partial" or "full" (graft.recipe.strategy)
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
    aug_views: int | str = "auto"  # head: K cached augmented views of every training photo, or "auto" (above)
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
        validate(self)
        if isinstance(self.backbone, str) and "+" in self.backbone:  # a concatenation: frozen features only
            from graft.features.concat import require_frozen

            require_frozen(self.backbone, self.strategy)
            if self.aug_views != "auto" and self.aug_views:
                raise GraftError(f"--aug-views works with a single backbone, not the concatenation {self.backbone}")
        object.__setattr__(self, "log", parse_log_kinds(self.log))
        if "tensorboard" in self.log:
            require_tensorboard()

    def solvers(self) -> tuple[str, ...]:
        from graft.heads.search import SOLVERS

        return SOLVERS if self.solver == "auto" else (self.solver,)

    def preset(self, use: str) -> str:
        """The augmentation preset for `use`: "finetune" or "views"."""
        if self.augment:
            return self.augment
        if use == "views":
            return VIEWS_PRESET
        from graft.augment import DEFAULT_PRESET  # here: graft.augment imports torchvision (seconds)

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


# setting -> (test, the range as the message says it); None (the trainer's default) always passes
_RANGES = {
    "epochs": (lambda v: v >= 1, "a whole number >= 1"),
    "batch_size": (lambda v: v >= 1, "a whole number >= 1"),
    "lr": (lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
    "weight_decay": (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    "label_smoothing": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "patience": (lambda v: v >= 0, "a whole number >= 0 (0 = never stop)"),
    "aug_views": (lambda v: v >= 0, "auto or a whole number >= 0"),
    "val_split": (lambda v: 0 < v < 1, "a number in (0, 1)"),
    "workers": (lambda v: v >= 0, "a whole number >= 0"),
    "train_stages": (lambda v: v >= 1, "a whole number >= 1"),
}
_WHOLE = {"epochs", "batch_size", "patience", "aug_views", "workers", "train_stages"}


def validate(cfg: TrainConfig) -> None:
    """Refuse nonsense settings before any photo is read (issue 14: `--epochs -1` saved an untrained
    head, `--lr nan` trained NaNs, `--batch-size 0` crashed after extraction), naming the range.
    The augmentation overrides are parsed here too, so a typo costs no extraction."""
    for name, (ok, rng) in _RANGES.items():
        value = getattr(cfg, name)
        if value is None or (name == "aug_views" and value == "auto"):
            continue
        whole = isinstance(value, int) and not isinstance(value, bool)
        number = whole or (isinstance(value, float) and name not in _WHOLE)
        if not number or not ok(value):
            flag = "--" + name.replace("_", "-")
            raise GraftError(f"{flag} must be {rng}, got {value!r}")
    if cfg.augment is not None or cfg.aug is not None:
        check_augmentation(cfg)


def check_augmentation(cfg: TrainConfig) -> None:
    """Parse the preset and the overrides now; refuse them where nothing would use them."""
    from graft.augment import PRESETS, check_overrides, load_overrides, parse_overrides

    if cfg.augment is not None and cfg.augment not in PRESETS:
        raise GraftError(f"unknown augment preset {cfg.augment!r}; valid presets: {', '.join(PRESETS)}")
    aug = cfg.aug
    try:
        if isinstance(aug, (str, Path)) and Path(str(aug)).suffix in (".json", ".toml"):
            load_overrides(aug)
        elif isinstance(aug, str):
            parse_overrides(aug)
        elif aug is not None:
            check_overrides(dict(aug))
    except (ValueError, TypeError) as e:
        raise GraftError(f"--aug: {e}") from None
    if cfg.strategy == "head" and cfg.aug_views == 0 and (aug or (cfg.augment not in (None, "none"))):
        given = "--aug" if aug else "--augment"
        raise GraftError(f"{given} is unused: --strategy head augments only its cached views, and --aug-views 0 "
                         f"asks for none; drop --aug-views 0 (auto weighs 4 views) or drop {given}")


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict

    @property
    def val_accuracy(self) -> float:
        return self.metrics["val_accuracy"]
