"""A backbone's frozen features, part by part from each part's own cache namespace: a single
backbone is its one part, a concatenation (`lite0+lite2`, graft.backbones.concat) joins its
parts' rows side by side.

Why part by part: extraction through the concatenated network would compute every part again
for every photo; here each part reads and fills the namespace a run with that backbone alone
uses (cache_namespace(part)), so only what a part is missing is computed, by that part alone,
and `--backbone auto` weighs concatenations of the backbones it already extracted for free.
Reading from both is exact: the features are the ones each part computed alone, which is also
what the concatenated network computes from the tiled crop at predict time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from graft.data import BATCH_SIZE
from graft.errors import GraftError
from graft.features.extract import ExtractStats, cache_namespace, extract_features


@dataclass
class SourceStats:
    """Per part, the usual extraction figures; the totals are what a run's metrics report."""

    parts: dict[str, ExtractStats] = field(default_factory=dict)

    @property
    def hits(self) -> int:
        return sum(s.hits for s in self.parts.values())

    @property
    def misses(self) -> int:
        return sum(s.misses for s in self.parts.values())

    @property
    def forward_batches(self) -> int:
        return sum(s.forward_batches for s in self.parts.values())

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.parts.values())

    @property
    def skipped(self) -> list[dict]:
        """Each unreadable photo once, not once per part."""
        seen, out = set(), []
        for s in self.parts.values():
            for item in s.skipped:
                if item["path"] not in seen:
                    seen.add(item["path"])
                    out.append(item)
        return out


class JoinedCache:
    """The FeatureCache interface (`refresh`, `get`) over a backbone's parts: a photo's row is its
    parts' cached rows side by side, and it misses when any part misses. What lets `graft
    predict --cache-dir` answer already extracted photos without the networks, and what
    source_features reads and fills."""

    def __init__(self, parts, cache_root, point: str = "pooled"):
        """`parts`: a source's or a built backbone's parts (what names a namespace)."""
        from graft.cache import FeatureCache

        self.parts = [FeatureCache(cache_root, cache_namespace(part, point)) for part in parts]

    def refresh(self) -> None:
        for cache in self.parts:
            cache.refresh()

    def get(self, names: list[str]) -> tuple[np.ndarray | None, list[int]]:
        got = [cache.get(names) for cache in self.parts]
        missing = sorted(set().union(*(m for _, m in got)))
        if len(missing) == len(names):
            return None, missing
        out = np.concatenate([rows for rows, _ in got], axis=1)
        out[missing] = 0.0
        return out, missing


class CachedRows:
    """Rows of `names` left in `cache` (extraction with `keep=False`): indexing by a list of
    positions gives a graft.cache.rows.FeatureRows over those entries, as an array's would."""

    def __init__(self, cache, names: list[str]):
        self.cache, self.names = cache, names

    def __getitem__(self, positions):
        from graft.cache.rows import FeatureRows

        return FeatureRows(self.cache, [self.names[i] for i in positions])


def source_features(source, samples, cache: JoinedCache, *, batch_size: int = BATCH_SIZE,
                    workers: int | None = None, progress: bool = True, dist=None, load_for=None,
                    desc: str = "features", forward=None, keep: bool = True, graph_wanted: bool = False):
    """-> (features (N, sum of the parts' widths) float32, ok mask, SourceStats) of data.Samples
    through `source` (a graft.backbones source), each part read from and written to its own
    namespace of `cache` (JoinedCache(source.parts, root, point)).

    A photo is ok only if every part could read it (its row is zero otherwise). `load_for(pre)`:
    the `load` of a part with preprocessing `pre` (default its centre crop, `pre.load`; e.g. one
    refusing placeholders, graft.data.placeholders.RefuseNonPhotos, or the corner crops of --tta
    crops, whose features live under another point of the namespace). `forward`, `keep`: as
    extract_features's (and `graph_wanted`); with `keep=False` a single backbone's rows stay in the cache (CachedRows),
    several parts' are joined in memory."""
    names, paths = [s.digest for s in samples], [s.path for s in samples]
    several = len(source.parts) > 1  # several parts: joined in memory, each part's progress named
    stats, blocks, oks = SourceStats(), [], []
    for part, part_cache in zip(source.parts, cache.parts):
        load = load_for(part.preprocessing) if load_for else part.preprocessing.load
        feats, ok, st = extract_features(part.build, names, paths, part_cache, load=load, batch_size=batch_size,
                                         workers=workers, progress=progress, dist=dist, forward=forward,
                                         desc=f"{desc} ({part.spec})" if several else desc, keep=keep or several,
                                         graph_wanted=graph_wanted and not several)
        stats.parts[part.spec] = st
        blocks.append(feats)
        oks.append(ok)
    if not several:  # one part's rows are themselves
        return (blocks[0] if keep else CachedRows(cache.parts[0], names)), oks[0], stats
    return (*join_rows(blocks, oks, source.spec), stats)


def join_rows(blocks: list[np.ndarray], oks: list[np.ndarray], spec: str) -> tuple[np.ndarray, np.ndarray]:
    """-> (the parts' rows side by side, ok mask): a photo is ok only if every part read it, and
    its row is zero otherwise. `spec`: the concatenation's, for the error."""
    ok = np.logical_and.reduce(oks)
    if 0 in [b.shape[1] for b in blocks] and len(ok) and ok.any():  # a part produced nothing although photos were read
        raise GraftError(f"backbone {spec}: a part produced no features")
    feats = np.concatenate(blocks, axis=1)
    feats[~ok] = 0.0
    return feats, ok
