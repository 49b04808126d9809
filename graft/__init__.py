"""graft: turn a folder of photos into a good image classifier by transfer learning.

The package reads like the pipeline: data (scan + read images) -> augment -> loader ->
backbones -> cache (frozen features on disk) -> head (new softmax) -> evaluate -> train/predict
(one call each) -> cli.
"""

__version__ = "0.1.0"

from ._malloc import tune_malloc

tune_malloc()  # before torch allocates anything; see graft/_malloc.py and bench/malloc_tuning.py

from .api import evaluate, predict, train  # noqa: E402
from .cache_admin import prune as prune_cache, usage as cache_usage  # noqa: E402
from .errors import GraftError  # noqa: E402
from .predictor import Predictor  # noqa: E402

__all__ = ["train", "predict", "evaluate", "Predictor", "cache_usage", "prune_cache", "GraftError", "__version__"]
