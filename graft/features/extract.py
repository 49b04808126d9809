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

from graft._version import __version__
from graft.backbones.bf16_engine import views_engine
from graft.backbones.engine import extraction_engine, intra_op_threads
from graft.cache import FeatureCache
from graft.data import BATCH_SIZE
from graft.features.loader import decoding

log = logging.getLogger("graft")


@dataclass
class ExtractStats:
    hits: int = 0
    misses: int = 0
    forward_batches: int = 0
    seconds: float = 0.0
    wait_s: float = 0.0  # time the backbone waited for the loader's next batch
    compute_s: float = 0.0  # time in the backbone
    skipped: list[dict] = field(default_factory=list)
    engines: set = field(default_factory=set)  # the engines that computed what missed ("onnxruntime", ...)

    def add(self, other: "ExtractStats", *, skipped: bool = True) -> None:
        """Count `other`'s figures in too (a concatenation's parts into its run's)."""
        for name in ("hits", "misses", "forward_batches", "seconds", "wait_s", "compute_s"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.engines |= other.engines
        if skipped:
            self.skipped += other.skipped

    def add_ahead(self, other: "ExtractStats") -> None:
        """Count the work of a lookup that a later one of the same run repeats (the default
        backbone's training features, which the feature step looks up again with the validation
        photos): what it computed and its time, but none of its entries as a hit, since the later
        lookup counts each of them as one. A run's figures then count each photo once."""
        self.add(other, skipped=False)
        self.hits -= other.hits + other.misses


def cache_namespace(source, point: str = "pooled") -> dict:
    """Everything that changes a cached feature (a BackboneSource's identity): the key hashes it."""
    return {
        "arch": source.arch,
        "weights_digest": source.weights.digest,
        "preprocessing": source.preprocessing.to_json(),
        "point": point,
    }


def extract_features(get_backbone: Callable, names: list[str], paths: list, cache: FeatureCache, *, load: Callable,
                     batch_size: int = BATCH_SIZE, workers: int | None = None, progress: bool = True,
                     desc: str = "features", stats: ExtractStats | None = None, forward: Callable | None = None,
                     dist=None, keep: bool = True, engine: str | None = None, graph_wanted: bool = False,
                     precision: str = "fp32") -> tuple[np.ndarray, np.ndarray, ExtractStats]:
    """Features for entries `names` (files `paths`); returns (features, ok_mask, stats).

    `get_backbone()` is called only if something misses, so a warm cache never builds the
    network. `load(path)` turns a file into a uint8 (3, H, W) tensor; rows of files that fail
    to load are zero and False in `ok_mask`, and listed in `stats.skipped`. `forward(backbone, x)`
    computes what is cached (default: the pooled features, `backbone(x)`), flattened per image.

    Under torchrun (`dist`, a graft.finetune.distributed.Context with several ranks) each rank computes
    its share of the missing entries into the shared cache, then every rank reads them all.

    `engine` computes the pooled features: "auto", "torch" or "onnxruntime" (graft.backbones.engine;
    the cached values agree within 1e-4 whichever runs); `graph_wanted`: as extraction_engine's;
    `precision` "bf16": graft.backbones.bf16_engine.views_engine (only for entries named so: extract_views).
    `keep=False` returns None for the features: they are computed and checked but left in the
    cache, for graft.cache.rows to read when needed, so memory does not grow with the data.
    """
    stats = stats or ExtractStats()
    t0 = time.perf_counter()
    feats, missing = _lookup(cache, names, keep)
    ok = np.ones(len(names), bool)
    rule = skip_rule(load)
    recalled = 0
    if missing and rule and not (dist is not None and dist.enabled):
        missing, recalled = _recall_skips(cache, names, paths, missing, ok, stats, rule)
    if dist is not None and dist.enabled:
        # Every rank shards the same list: the union of what each one found missing, gathered (a
        # collective) before any rank writes. Sharding each rank's own list raced: a rank that
        # looked up after another had written some entries sharded a shorter list, and an entry
        # fell to no rank (the two-node test lost a photo's boundary activations now and then).
        missing = sorted(set(dist.gather_lists(missing)))
    if missing and dist is not None and dist.enabled:
        mine = dist.shard(missing)
        before = (stats.misses, stats.forward_batches)
        n_written = len(cache.written)
        with cache.extraction_lock(shared=True):
            _compute_missing(get_backbone, names, paths, cache, mine, feats, ok, load=load, batch_size=batch_size,
                             workers=workers, progress=progress and dist.is_main, desc=desc, stats=stats,
                             forward=forward, keep=keep, engine=engine, graph_wanted=graph_wanted,
                             precision=precision)
            # every rank's new shards, by name (a collective: it waits for all ranks): on another
            # node the shared folder's listing may lag, opening a named file does not
            written = dist.gather_lists([str(p) for p in cache.written[n_written:]])
            cache.refresh(extra=written)
            feats, still = _lookup(cache, names, keep)
        ok[still] = False  # files no rank could read; their reasons are gathered below
        stats.skipped = dist.gather_lists(stats.skipped)
        misses, batches = dist.sum(stats.misses - before[0], stats.forward_batches - before[1])
        stats.misses, stats.forward_batches = before[0] + int(misses), before[1] + int(batches)
        stats.hits += len(names) - len(missing)
        stats.seconds += time.perf_counter() - t0
        return feats, ok, stats
    if missing:
        with cache.extraction_lock():
            cache.refresh()  # another process may have computed some while we waited
            feats, missing = _lookup(cache, names, keep)
            missing = [i for i in missing if ok[i]]  # files remembered as unusable stay skipped
            feats = _compute_missing(get_backbone, names, paths, cache, missing, feats, ok, load=load,
                                     batch_size=batch_size, workers=workers, progress=progress, desc=desc,
                                     stats=stats, forward=forward, keep=keep, engine=engine, graph_wanted=graph_wanted,
                                     precision=precision)
    stats.hits += len(names) - len(missing) - recalled
    stats.seconds += time.perf_counter() - t0
    if feats is None and keep:
        feats = np.zeros((len(names), 0), np.float32)
    return feats, ok, stats


def _lookup(cache: FeatureCache, names: list[str], keep: bool):
    """(features or None, positions that miss); with `keep=False` nothing is gathered."""
    if keep:
        return cache.get(names)
    return None, [i for i, name in enumerate(names) if cache.locate(name) is None]


def skip_rule(load) -> str | None:
    """What the files `load` refuses are remembered under (its `skip_rule` and graft's version), so
    a new rule or release tries them again; None: a load that states no rule is not remembered."""
    rule = getattr(load, "skip_rule", None)
    return f"{rule}; graft {__version__}" if rule else None


def _recall_skips(cache, names, paths, missing, ok, stats, rule) -> tuple[list[int], int]:
    """-> (the missing positions less the files remembered as unusable, how many those were):
    each is skipped again with its reason, unopened."""
    known = cache.skips([names[i] for i in missing], rule)
    for i in missing:
        if names[i] in known:
            ok[i] = False
            stats.skipped.append({"path": str(paths[i]), **known[names[i]]})
    left = [i for i in missing if ok[i]]
    return left, len(missing) - len(left)


def _compute_missing(get_backbone, names, paths, cache, missing, feats, ok, *, load, batch_size, workers,
                     progress, desc, stats, forward, keep=True, engine=None, graph_wanted=False, precision="fp32"):
    if not missing:
        return feats
    # The decoding starts first (decoding), so the first batches decode while the network is
    # built and its onnxruntime session made and checked: a cold run waited for both in turn.
    loader = decoding([paths[i] for i in missing], load, batch_size=batch_size, workers=workers,
                      threads=intra_op_threads())
    batches = iter(loader)
    try:
        backbone = get_backbone()
        backbone.eval()
        if precision == "bf16" and forward is None:  # augmented views (extract_views)
            run = views_engine(backbone, n_images=len(missing), cache_root=cache.dir.parent, precision=precision)
        else:
            run = extraction_engine(backbone, n_images=len(missing), cache_root=cache.dir.parent, engine=engine,
                                    custom_forward=forward is not None, graph_wanted=graph_wanted)
        stats.engines.add("torch" if forward is not None else run.name)
    except BaseException:
        getattr(loader, "close", lambda: None)()  # its threads (or, by `del`, its workers) stop now,
        del batches, loader  # not when the traceback is dropped
        raise
    pre = backbone.preprocessing
    from tqdm.auto import tqdm

    bar = tqdm(total=len(missing), desc=desc, unit="img", disable=not progress, leave=False)
    unusable = []  # (entry name, reason, code) to remember, for loads that state their rule
    with torch.inference_mode():
        t_wait = time.perf_counter()
        for idx, batch, errors in batches:
            t_got = time.perf_counter()
            stats.wait_s += t_got - t_wait
            for i, e in errors:
                stats.skipped.append({"path": e.path, "reason": e.reason, "code": e.code})
                unusable.append({"name": names[missing[i]], "reason": e.reason, "code": e.code})
                ok[missing[i]] = False
            if batch is not None:
                x = pre.normalize(batch)
                if run.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                out = (forward(backbone, x) if forward else run(x)).flatten(1).float().cpu().numpy()
                stats.forward_batches += 1
                stats.compute_s += time.perf_counter() - t_got
                rows = [missing[i] for i in idx]
                cache.put([names[r] for r in rows], out)
                if keep:
                    if feats is None:
                        feats = np.zeros((len(names), out.shape[1]), np.float32)
                    feats[rows] = out
            stats.misses += len(idx)
            bar.update(len(idx) + len(errors))
            t_wait = time.perf_counter()
    bar.close()
    rule = skip_rule(load)
    if rule:
        cache.remember_skips(unusable, rule)
    return feats


def extract_views(source, samples, cache: FeatureCache, pipeline, k: int, *, seed: int,
                  batch_size: int = BATCH_SIZE, workers: int | None = None, progress: bool = True,
                  stats: ExtractStats | None = None, decoded_dir=None, dist=None, keep: bool = True,
                  precision: str = "fp32"):
    """Features of `k` augmented draws of each sample: (N, k, D), cached like clean features
    (with `keep=False`, a graft.cache.rows.FeatureRows over them instead of an array).

    View v of an image is keyed by its content hash, the augmentation config's key (and the
    kernels' version), the seed and v, and drawn from a random stream seeded by the same, so
    later runs reuse every view. A file that fails to load here has already been skipped by the
    clean pass. With `decoded_dir`, each photo is decoded once for all its views
    (graft.data.decoded). `precision` "bf16" (graft.backbones.bf16_engine.views_precision) lets
    OpenVINO compute them in bfloat16, under names of their own ("~bf16"): they never stand in for
    float32 views, nor those for them.
    """
    from graft.augment import KERNELS
    from graft.features.loader import AugmentedLoad, decoded_cache_for, mix_seed

    key = pipeline.config().key()
    names, items = [], []
    for s in samples:
        for v in range(k):
            # The kernels' version is in the name: the same draw rendered by other kernels is
            # another entry. The draw itself depends on the config only.
            names.append(f"{s.digest}@{key}k{KERNELS}:{seed}#{v}" + ("~bf16" if precision == "bf16" else ""))
            items.append((s.path, s.size, mix_seed(seed, s.digest, key, v), s.digest))
    decoded = decoded_cache_for(samples, pipeline, decoded_dir, None)
    feats, _, _ = extract_features(source.build, names, items, cache,
                                   load=AugmentedLoad(pipeline, source.preprocessing, decoded),
                                   batch_size=batch_size, workers=workers, progress=progress,
                                   desc=f"augmented views x{k}", stats=stats, dist=dist, keep=keep,
                                   precision=precision)
    if not keep:
        from graft.cache.rows import FeatureRows

        return FeatureRows(cache, [names[i * k:(i + 1) * k] for i in range(len(samples))])
    return feats.reshape(len(samples), k, -1)
