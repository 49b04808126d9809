"""graft: turn a folder of photos into a good image classifier by transfer learning.

The package reads like the pipeline, bottom up: data (scan + read images) -> augment ->
backbones -> loader -> cache (frozen features on disk) -> features -> head / finetune / strategy
-> run (the run folder) -> calibrate -> inference (predict, evaluate) -> report -> train (the
recipe, step by step) -> cli (one module per command). pyproject.toml's import-linter contract
holds these layers: each imports only the ones below it.
"""

from ._version import __version__
from ._malloc import tune_malloc

tune_malloc()  # before torch allocates anything; see graft/_malloc.py and bench/malloc_tuning.py

from .cache.admin import prune as prune_cache, usage as cache_usage  # noqa: E402
from .errors import GraftError  # noqa: E402
from .inference import evaluate, predict  # noqa: E402
from .train import train  # noqa: E402  (the function; the recipe's module is graft/train/)

__all__ = ["train", "predict", "evaluate", "cache_usage", "prune_cache", "GraftError", "__version__"]
