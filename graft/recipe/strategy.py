"""`--strategy auto`: how much of the network to train, from the data (the lecture's ladder).

The rule, in the README as a table:

| labelled training images per class (smallest class) | frozen head's cv accuracy | strategy |
| --- | --- | --- |
| fewer than 250 | any | `head`: frozen backbone, new softmax on cached features |
| 250 to 2,499 | 0.97 or more (task close to ImageNet) | `head` |
| 250 to 2,499 | below 0.97 | `partial`, last 2 stages |
| 2,500 to 24,999 | any | `partial`, last 3 stages |
| 25,000 or more | any | `full`: pretrained weights as the initialisation |

The thresholds come from `bench/ladder.py`: on hymenoptera (about 120 photos per class) the frozen
head matches or beats fine-tuning at a fraction of the cost, so "little data" reaches further than
the usual rule of thumb of 100 per class.

With a run at hand, `auto` decides by evidence instead (graft.recipe.trial, `trial=`): a short
fine-tuning trial against the head on an inner split of the training photos, within --budget.
The rule stays for callers that cannot run a trial.

The frozen head (the new softmax on frozen features, chosen by cross-validation on the training
photos, graft.heads.search; its accuracy there is the figure read) costs seconds thanks to the cache,
and says how well the pretrained features already separate the classes: when they nearly do,
training more layers on a few hundred images mostly adds variance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from graft.errors import GraftError

STRATEGIES = ("auto", "head", "partial", "full")
PROBE_GOOD_ENOUGH = 0.97


@dataclass(frozen=True)
class StrategyChoice:
    strategy: str
    train_stages: int
    reason: str
    evidence: dict | None = None  # the trial's figures (graft.recipe.trial), for metrics.json


def check_request(strategy: str, *, from_scratch: bool = False) -> None:
    """The rules a requested strategy follows whatever the data: checked before any photo is read."""
    if strategy not in STRATEGIES:
        raise GraftError(f"unknown strategy {strategy!r}; available: {', '.join(STRATEGIES)}")
    if from_scratch and strategy != "full":
        raise GraftError("--from-scratch trains every layer from random weights: use it with --strategy full")


LITTLE_DATA = 250  # fewer training photos than this in the smallest class: `auto` trains the head only


def smallest_class(samples, n_classes: int) -> int:
    """How many of `samples` (graft.data.Samples) the least represented of n_classes has."""
    counts = [0] * n_classes
    for s in samples:
        counts[s.label] += 1
    return min(counts) if counts else 0


def head_only(requested: str, per_class: int) -> bool:
    """Whether a run asking for `requested` trains the head alone whatever its photos say: what
    `auto` can weigh only for such runs (a concatenated backbone, augmented views) asks this."""
    return requested == "head" or (requested == "auto" and per_class < LITTLE_DATA)


def choose_strategy(requested: str, data, probe_accuracy: float, *, train_stages: int = 2,
                    frozen_only: str | None = None,
                    trial: Callable[[], StrategyChoice] | None = None) -> StrategyChoice:
    """`requested` unless it is "auto"; `data` is a graft.data.Dataset of usable samples.
    `frozen_only`: why only the head can train (a concatenated backbone), if so. `trial`: under
    auto, what decides by evidence on the training photos (graft.recipe.trial.weigh_finetuning,
    bound to the run); without one (a caller that cannot run a trial), the fixed rule above."""
    check_request(requested)
    if requested != "auto":
        return StrategyChoice(requested, train_stages, f"asked for --strategy {requested}")
    # the figure read is the head chosen by cross-validation (L-BFGS or AdamW, views or not): named as such
    probe = f"frozen head's cross-validated accuracy {probe_accuracy:.3f} on the training photos"
    if frozen_only:
        return StrategyChoice("head", train_stages, f"{frozen_only}: only a new softmax trains ({probe})")
    if trial is not None:
        return trial()
    per_class = smallest_class(data.train, len(data.classes))
    if per_class < LITTLE_DATA:
        return StrategyChoice("head", train_stages,
                              f"{per_class} training images in the smallest class (< 250): little data, "
                              f"train only a new softmax on the frozen backbone ({probe})")
    if per_class < 2500:
        if probe_accuracy >= PROBE_GOOD_ENOUGH:
            return StrategyChoice("head", train_stages,
                                  f"{per_class} images per class (250-2,499) and {probe} >= {PROBE_GOOD_ENOUGH}: "
                                  f"the pretrained features already separate the classes")
        return StrategyChoice("partial", 2,
                              f"{per_class} images per class (250-2,499) and {probe} < {PROBE_GOOD_ENOUGH}: "
                              f"fine-tune the last 2 stages")
    if per_class < 25000:
        return StrategyChoice("partial", 3,
                              f"{per_class} images per class (2,500-24,999): fine-tune the last 3 stages")
    return StrategyChoice("full", train_stages,
                          f"{per_class} images per class (25,000+): lots of data, train the whole network "
                          f"from the pretrained initialisation")
