"""graft: turn a folder of photos into a good image classifier by transfer learning.

The package reads like the pipeline, bottom up: data (scan + read images) -> augment ->
backbones -> loader -> cache (frozen features on disk) -> features -> head / finetune / strategy
-> run (the run folder) -> calibrate -> inference (predict, evaluate, the Predictor) -> serve,
report -> train (the recipe, step by step) -> cli (one module per command). pyproject.toml's
import-linter contract holds these layers: each imports only the ones below it.

`import graft` imports neither torch nor the pipeline: the names below load their modules on
first use (module `__getattr__`), so `graft --help` and the commands that need no network start
in a fraction of a second.
"""

from graft._version import __version__
from graft._util.malloc import tune_malloc
from graft.errors import GraftError

tune_malloc()  # before torch allocates anything (torch is imported later, on first use); see bench/malloc_tuning.py

_LAZY = {  # public name -> (module, attribute)
    "train": ("graft.recipe", "train"),  # the function; its package is graft.recipe
    "predict": ("graft.use.inference", "predict"),
    "evaluate": ("graft.use.inference", "evaluate"),
    "Predictor": ("graft.use.predictor", "Predictor"),
    "cache_usage": ("graft.cache.admin", "usage"),
    "prune_cache": ("graft.cache.admin", "prune"),
}

__all__ = ["train", "predict", "evaluate", "Predictor", "cache_usage", "prune_cache", "GraftError", "__version__"]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'graft' has no attribute {name!r}")
    import importlib

    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
