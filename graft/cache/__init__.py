"""graft's on-disk cache: its layout (layout.py), the feature cache (features.py), and what it
holds and pruning it (admin.py). Everything in it can be recomputed."""

from graft.cache.features import FeatureCache
from graft.cache.layout import cache_root, default_cache_dir, touch

__all__ = ["FeatureCache", "cache_root", "default_cache_dir", "touch"]
