"""Frozen-backbone features for a list of images, computed at most once thanks to the cache.

Cached entries are read back without touching the backbone (a warm run makes no forward pass at
all); missing ones are decoded by loader workers, pushed through the backbone in inference mode
and written to the cache one batch per shard, so a killed extraction keeps what it finished.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .cache import FeatureCache
from .loader import image_loader

log = logging.getLogger("graft")


@dataclass
class ExtractStats:
    hits: int = 0
    misses: int = 0
    forward_batches: int = 0
    seconds: float = 0.0
    skipped: list[dict] = field(default_factory=list)


def cache_namespace(source, point: str = "pooled") -> dict:
    """Everything that changes a cached feature (a BackboneSource's identity): the key hashes it."""
    return {
        "arch": source.arch,
        "weights_digest": source.weights.digest,
        "preprocessing": source.preprocessing.to_json(),
        "point": point,
    }


def extract_features(
    get_backbone: Callable,
    names: list[str],
    paths: list,
    cache: FeatureCache,
    *,
    load: Callable,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = True,
    desc: str = "features",
    stats: ExtractStats | None = None,
) -> tuple[np.ndarray, np.ndarray, ExtractStats]:
    """Features for entries `names` (files `paths`); returns (features, ok_mask, stats).

    `get_backbone()` is called only if something misses, so a warm cache never builds the
    network. `load(path)` turns a file into a uint8 (3, H, W) tensor; rows of files that fail
    to load are zero and False in `ok_mask`, and listed in `stats.skipped`.
    """
    stats = stats or ExtractStats()
    t0 = time.perf_counter()
    feats, missing = cache.get(names)
    stats.hits += len(names) - len(missing)
    ok = np.ones(len(names), bool)
    if missing:
        backbone = get_backbone()
        backbone.eval()
        # channels_last: about 1.3x faster convolutions on the CPU (bench/extract_speed.py)
        backbone.to(memory_format=torch.channels_last)
        pre = backbone.preprocessing
        loader = image_loader([paths[i] for i in missing], load, batch_size=batch_size, workers=workers)
        from tqdm.auto import tqdm

        bar = tqdm(total=len(missing), desc=desc, unit="img", disable=not progress, leave=False)
        with torch.inference_mode():
            for idx, batch, errors in loader:
                for e in errors:
                    stats.skipped.append({"path": e.path, "reason": e.reason})
                    ok[missing[_index_of(paths, missing, e.path)]] = False
                if batch is not None:
                    x = pre.normalize(batch).contiguous(memory_format=torch.channels_last)
                    out = backbone(x).float().cpu().numpy()
                    stats.forward_batches += 1
                    rows = [missing[i] for i in idx]
                    cache.put([names[r] for r in rows], out)
                    if feats is None:
                        feats = np.zeros((len(names), out.shape[1]), np.float32)
                    feats[rows] = out
                stats.misses += len(idx)
                bar.update(len(idx) + len(errors))
        bar.close()
    stats.seconds += time.perf_counter() - t0
    if feats is None:
        feats = np.zeros((len(names), 0), np.float32)
    return feats, ok, stats


def _index_of(paths, missing, path) -> int:
    for j, i in enumerate(missing):
        if str(paths[i]) == str(path):
            return j
    raise KeyError(path)

