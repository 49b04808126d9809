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

import sys
import types

from ._version import __version__
from ._malloc import tune_malloc
from .errors import GraftError

tune_malloc()  # before torch allocates anything (torch is imported later, on first use); see bench/malloc_tuning.py

_LAZY = {  # public name -> (module, attribute)
    "train": ("graft.train", "train"),  # the function; the recipe's module is graft/train/
    "predict": ("graft.inference", "predict"),
    "evaluate": ("graft.inference", "evaluate"),
    "Predictor": ("graft.predictor", "Predictor"),
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


class _Package(types.ModuleType):
    """`graft.train` is the function, as it was when this file imported it eagerly: the import
    system binds the subpackage graft/train/ here when something first imports it, so that one
    assignment is turned into its `train` function (reach the package's names with
    `from graft.train import ...`)."""

    def __setattr__(self, name, value):
        if name == "train" and isinstance(value, types.ModuleType):
            value = value.train
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
