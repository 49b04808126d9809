"""Every setting of a training run, its default and what it means, in one place: `TrainConfig`.

`graft.train(photos, out, **settings)` takes its fields as keywords and `graft train` offers each
as an option; both are made from the fields (graft/recipe/settings.py says how), so a setting is
added here and nowhere else. A setting left at None means "what the trainer that runs uses": the
head on cached features costs milliseconds an epoch, so it runs long and waits long
(graft.heads.softmax.HeadConfig), fine-tuning costs minutes an epoch (graft.finetune.config.FinetuneConfig).
The help of epochs, lr and patience quotes their defaults: this module imports no torch (`graft
train --help` must not), and tests/recipe/test_settings.py holds the quotes to those configs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from graft.backbones.spec import is_joined
from graft.data import BATCH_SIZE, VAL_SPLIT
from graft.errors import GraftError
from graft.heads.optimisation import Optimisation
from graft.recipe.settings import (NOT_NEGATIVE, POSITIVE, SHARE, WHOLE_FROM_0, WHOLE_FROM_1, Range, flags,
                                   parse_hidden_sizes, parse_seconds, setting, unknown_setting, views_count,
                                   worker_count)
from graft.recipe.strategy import STRATEGIES, StrategyChoice, check_request
from graft.recipe.limits import MAX_VIEWS
from graft.recipe.log import parse_log_kinds, require_tensorboard

if TYPE_CHECKING:  # both import torch: loaded when a trainer's settings are made
    from graft.finetune.config import FinetuneConfig
    from graft.heads.softmax import HeadConfig

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
# Weighed on this share of each class's training photos first (graft.recipe.extraction
# weigh_views_on_share): the rest's views are computed unless they lose there.
AUTO_VIEWS_SHARE = 0.25
AUTO_VIEWS_MIN_PER_CLASS = 20
AUTO_VIEWS_MAX_PHOTOS = 1000

# --backbone auto: the bundled candidates and their extraction cost relative to lite0 (hymenoptera,
# cold CPU-seconds: lite0 19.9, lite1 23.3, lite2 25.5; bench/quality_study.py), cheapest first:
# ties go to the cheaper. Concatenations of those that were extracted are weighed too (their cost
# is the sum of the parts': each photo goes through every part at predict time); their features
# are already in the cache.
AUTO_CANDIDATES = (("lite0", 1.0), ("lite1", 1.2), ("lite2", 1.35))

# --seed seeds torch (which takes 64 bits) and numpy's default_rng (no negatives): 99999999999999999999999
# failed inside torch.manual_seed with a traceback and -1 reached numpy (issue 22, finding 13). 0 to
# 2**32 - 1 is what both take, and what seeds conventionally are. --budget: finite, at most a week.
MAX_SEED = 2**32 - 1
MAX_BUDGET_S = 7 * 24 * 3600
BACKBONE_BUDGET_S = 300.0  # --backbone auto's extraction budget when --budget is not given
# What the training photos must show before graft pays to weigh more than a frozen head on clean
# features: at least MIN_MISSES_TO_WEIGH of them missed in that head's cross-validation. With fewer,
# whatever another candidate fixes is within the folds' noise (a paired difference of a few photos),
# and the run stays one fast network on clean features:
# - the default backbone weighs the others (as --backbone auto weighs them, within the same budget)
#   only past it, and where its head cross-validates below PROBE_GOOD_ENOUGH
#   (graft.recipe.backbone_choice.weigh_for_default);
# - --aug-views auto weighs its K views (K more forward passes a photo) only past it, whatever the
#   backbone (graft.recipe.extraction.views_plan; bench/cold_run.py --seeds).
MIN_MISSES_TO_WEIGH = 20
# Seconds a photo for lite0 when nothing was measured yet (the default's features came from the
# cache): a 2-core laptop's cold extraction, decoding included (bench/extraction.py: 19 photos/s).
GUESS_S_PER_PHOTO = 0.05


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of graft.train; the order is `graft train --help`'s."""

    backbone: object = setting(
        "default", "default (= lite1), lite0, lite1, lite2 (EfficientNet-Lite0/1/2, ImageNet, ship with graft; "
        "see README 'Which backbone to pick'), timm:<model> or tv:<model>; several joined by + (e.g. lite0+lite2) "
        "concatenate their frozen features (head strategy only); auto: the bundled one that cross-validates best "
        "within --budget", flags=("--backbone", "-b"), metavar="SPEC")
    weights: object = setting(None, "local weights file for the backbone (.safetensors or .pth)", metavar="FILE")
    strategy: str = setting(
        "auto", "head: frozen backbone + new softmax on cached features; partial: also train the last "
        "--train-stages stages; full: train everything; auto (default): choose from the data (see README)",
        choices=STRATEGIES)
    train_stages: int = setting(2, "partial: how many of the backbone's last stages train (default {default})",
                                metavar="N", valid=WHOLE_FROM_1)
    new_hidden: tuple = setting((), "partial: replace the last N stages by new hidden layers of these sizes "
                                "(with dropout)", metavar="H[,H2]", parse=parse_hidden_sizes)
    from_scratch: bool = setting(False, "full: random initialisation instead of the pretrained weights "
                                 "(for comparison)")
    resume: bool = setting(False, "continue a killed or interrupted fine-tuning run in RUN")
    val_split: float = setting(VAL_SPLIT, "share of each class held out for validation when PHOTOS has no val/ "
                               "(default {default})", metavar="F", valid=SHARE)
    cache_dir: object = setting(None, "feature cache (default: $GRAFT_CACHE_DIR or ~/.cache/graft)", metavar="DIR")
    epochs: int | None = setting(None, "maximum epochs (default: head 100, fine-tuning 15)", type=int,
                                 valid=WHOLE_FROM_1)
    lr: float | None = setting(None, "AdamW learning rate of the new top (default 0.001; pretrained layers get "
                               "1/10)", type=float, valid=POSITIVE)
    weight_decay: float = setting(1e-2, "AdamW weight decay (default {default:g})", valid=NOT_NEGATIVE)
    label_smoothing: float = setting(0.1, "label smoothing of the loss (default {default:g})",
                                     valid=Range(lambda v: 0 <= v < 1, "a number in [0, 1)"))
    patience: int | None = setting(None, "stop after this many epochs without a lower validation loss; 0 = never "
                                   "(default: head 15, fine-tuning 5)", type=int,
                                   valid=Range(lambda v: v >= 0, "a whole number >= 0 (0 = never stop)", whole=True))
    batch_size: int = setting(BATCH_SIZE, "images per batch (default {default})", valid=WHOLE_FROM_1)
    seed: int = setting(0, "random seed; same seed, same model (default {default})",
                        valid=Range(lambda v: 0 <= v <= MAX_SEED, f"a whole number from 0 to {MAX_SEED}", whole=True))
    aug_views: int | str = setting(
        "auto", "head strategy: also cache the features of K augmented draws of every training image and train "
        "on them too; auto (default): 4 views, kept only if they cross-validate better on the training photos "
        "(weighed with 20+ photos in every class and up to 1,000 training photos); 0: none", type=views_count,
        metavar="K|auto", valid=Range(lambda v: 0 <= v <= MAX_VIEWS, f"auto or a whole number >= 0 and <= {MAX_VIEWS}",
                                       whole=True, words=("auto",)))
    balance: str = setting("auto", "auto (default): weight the loss so each class counts equally when the largest "
                           "class has more than 3x the photos of the smallest; none: never", choices=("auto", "none"))
    solver: str = setting(
        "auto", "the head's solver: lbfgs (logistic regression, L2 strength by cross-validation), adamw (epochs "
        "by cross-validation), or auto (default): whichever cross-validates better on the training photos",
        choices=("auto", "lbfgs", "adamw"))
    inner_split: float = setting(
        0.15, "fine-tuning: share of the training photos (picked by content hash) held out for early stopping "
        "and the best epoch, which never look at the validation photos (default {default:g})",
        metavar="F", valid=SHARE)
    budget: float | None = setting(
        None, "seconds (or e.g. 2m) what auto chooses may cost: --backbone auto's feature extraction of the "
        f"candidates lite0, lite1, lite2, estimated from lite0's measured rate (default {BACKBONE_BUDGET_S:g} s; "
        "concatenations of those extracted are weighed too, at no extraction cost); --strategy auto's "
        "fine-tuning, estimated from a short trial on the training photos (default 900 s; above it the "
        "head is kept)", metavar="SECONDS|Nm", parse=parse_seconds,
        valid=Range(lambda v: v is None or (math.isfinite(v) and 0 < v <= MAX_BUDGET_S),
                    f"a finite number of seconds above 0 and at most {MAX_BUDGET_S} (a week)"))
    final: bool = setting(False, "a model for deployment: after choosing everything on the training photos' "
                          "cross-validation, also train on the validation photos (no held-out accuracy then)")
    augment: str | None = setting(
        None, "augmentation preset: none, light, standard, heavy (default: standard when fine-tuning, light for "
        "--aug-views); see `graft augment list`", flags=("--augment", "--preset"), metavar="PRESET")
    aug: object = setting(None, "override knobs, e.g. flip=0.5,rotate=15,crop_scale=0.35-1, or a .json/.toml "
                          "file", metavar="KNOBS|FILE")
    aug_device: str = setting(
        "workers", "fine-tuning: where flips and colour ops run: in the loader workers (default), or batched per "
        "sample on the consumer's CPU (cpu) or the trainer's GPU (cuda)", choices=("workers", "cpu", "cuda"))
    boundary_views: int = setting(
        0, "partial fine-tuning with augmentation: cache the frozen stages' activations of K augmented views "
        "of each training photo once and train the last stages on them, each epoch running only the trainable "
        "stages (5.4x faster epochs on trashnet, 8.8x in bfloat16; bench/ladder_real.py); 0 (default): augment every epoch",
        metavar="K", valid=Range(lambda v: 0 <= v <= MAX_VIEWS, f"a whole number from 0 to {MAX_VIEWS}", whole=True))
    precision: str = setting(
        "auto", "fine-tuning's arithmetic: auto (bfloat16 autocast where the device computes it natively: a "
        "CUDA GPU, or a CPU with AVX512-BF16 or AMX; float32 elsewhere), bf16, fp32. bf16 also computes the "
        "augmented views in bfloat16 on OpenVINO (pip install 'graft[openvino]'): 1.3-1.7x faster, but 1.1 points "
        "lower held out on trashnet (bench/views_bf16.py). Clean features and the frozen head are always float32",
        choices=("auto", "bf16", "fp32"))
    boundary_cache: bool = setting(True, "fine-tuning with nothing augmented: compute the frozen stages' "
                                   "activations once, into the cache, so epochs run only the trainable stages "
                                   "(default; --no-boundary-cache runs them every epoch)")
    decode_once: bool = setting(True, "keep decoded photos in the cache folder so later epochs and runs skip "
                                "decoding (default; `graft cache prune` frees them)")
    log: object = setting("csv", "per-epoch log of the head and fine-tuning epochs: RUN/log.csv is always "
                          "written; tensorboard also writes RUN/tensorboard/ (needs pip install "
                          "'graft[tensorboard]')", metavar="csv|tensorboard")
    report: bool = setting(True, "write RUN/report.html: curves, confusion matrix, the worst photos (default)")
    workers: int | None = setting(None, "image decoding processes (default auto)", metavar="N|auto",
                                  parse=worker_count, valid=WHOLE_FROM_0)
    progress: bool = setting(True, "progress bars", no_flag="--quiet and --json switch them off, with the summary")

    def __post_init__(self):
        check_request(self.strategy, from_scratch=self.from_scratch)  # before any photo is read
        object.__setattr__(self, "new_hidden", tuple(self.new_hidden or ()))
        validate(self)
        check_frozen_only(self)
        object.__setattr__(self, "log", parse_log_kinds(self.log))
        if "tensorboard" in self.log:
            require_tensorboard()

    @classmethod
    def from_keywords(cls, settings: dict) -> TrainConfig:
        """graft.train's keywords; one that is no setting is refused in one line naming them all."""
        names = [f.name for f in fields(cls)]
        for name in settings:
            if name not in names:
                raise GraftError(unknown_setting(name, names))
        return cls(**settings)

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

    def optimisation(self) -> dict:
        """The settings both trainers share (graft.heads.optimisation.Optimisation); None: the trainer's own."""
        return {f.name: getattr(self, f.name) for f in fields(Optimisation) if getattr(self, f.name) is not None}

    def head_config(self) -> HeadConfig:
        from graft.heads.softmax import HeadConfig

        return HeadConfig(epochs=self.epochs or HeadConfig.epochs, lr=self.lr or HeadConfig.lr, **self.optimisation())

    def finetune_config(self, choice: StrategyChoice) -> FinetuneConfig:
        from graft.finetune.config import FinetuneConfig

        return FinetuneConfig(strategy=choice.strategy, train_stages=choice.train_stages, new_hidden=self.new_hidden,
                              from_scratch=self.from_scratch, epochs=self.epochs or FinetuneConfig.epochs,
                              lr=self.lr or FinetuneConfig.lr, boundary_views=self.boundary_views,
                              precision=self.precision,
                              **self.optimisation())


def validate(cfg: TrainConfig) -> None:
    """Refuse nonsense settings before any photo is read (issue 14: `--epochs -1` saved an untrained
    head, `--lr nan` trained NaNs, `--batch-size 0` crashed after extraction), naming the range
    (each field's `valid`) or the choices. The augmentation overrides are parsed here too, so a
    typo costs no extraction."""
    for f in fields(cfg):
        value, valid, choices = getattr(cfg, f.name), f.metadata.get("valid"), f.metadata.get("choices")
        if valid is not None and not valid.holds(value):
            raise GraftError(f"{flags(f)[0]} must be {valid.says}, got {value!r}")
        if choices is not None and value not in choices:
            raise GraftError(f"{f.name} must be {', '.join(choices[:-1])} or {choices[-1]}, not {value!r}")
    if cfg.augment is not None or cfg.aug is not None:
        check_augmentation(cfg)
    if cfg.boundary_views and (cfg.augment == "none" or cfg.new_hidden or cfg.strategy in ("full", "head")):
        raise GraftError("--boundary-views K caches augmented views of the frozen stages: it needs augmentation "
                         "(not --augment none), frozen stages kept as they are (not --new-hidden, not --strategy "
                         "full) and a strategy that fine-tunes (partial, or auto)")


def check_frozen_only(cfg: TrainConfig) -> None:
    """A concatenation of backbones (`lite0+lite2`) gives frozen features only (its source's
    `frozen_only`): fine-tuning it and --aug-views K are refused in one line, read from the spec
    before any photo is read or any weight is found."""
    if not is_joined(cfg.backbone):
        return
    if cfg.strategy not in ("head", "auto"):
        raise GraftError(f"--backbone {cfg.backbone} concatenates frozen features and works with --strategy head "
                         f"(or auto, which then keeps the head); fine-tuning a concatenation is not supported")
    if cfg.aug_views != "auto" and cfg.aug_views:
        raise GraftError(f"--aug-views works with a single backbone, not the concatenation {cfg.backbone}")


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
