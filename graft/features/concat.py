"""Features of a concatenated backbone (`lite0+lite2`, graft.backbones.concat), part by part
from each part's own cache namespace.

Why a module of its own: extraction through the concatenated network would compute every part
again for every photo; here each part reads and fills the namespace a run with that backbone
alone uses (cache_namespace(part)), so only what a part is missing is computed, by that part
alone, and `--backbone auto` weighs concatenations of the backbones it already extracted for
free. Reading from both is exact: the features are the ones each part computed alone, which is
also what the concatenated network computes from the tiled crop at predict time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from graft.backbones import resolve_backbone
from graft.backbones.concat import ConcatSource, is_concat
from graft.errors import GraftError
from graft.features.extract import ExtractStats, cache_namespace, extract_features


def require_frozen(spec, strategy: str) -> None:
    """Refuse, in one line, to fine-tune a concatenation."""
    if is_concat(spec) and strategy not in ("head", "auto"):
        raise GraftError(f"--backbone {spec} concatenates frozen features and works with --strategy head "
                         f"(or auto, which then keeps the head); fine-tuning a concatenation is not supported")


@dataclass
class ConcatStats:
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
        seen, out = set(), []
        for s in self.parts.values():
            for item in s.skipped:
                if item["path"] not in seen:
                    seen.add(item["path"])
                    out.append(item)
        return out

    def to_json(self) -> dict:
        return {spec: {"hits": s.hits, "misses": s.misses, "seconds": round(s.seconds, 4)}
                for spec, s in self.parts.items()}


def concat_features(source: ConcatSource | str, samples, cache_root, *, batch_size: int = 32,
                    workers: int | None = None, progress: bool = True, dist=None,
                    load_for=None, point: str = "pooled", desc: str = "features"):
    """-> (features (N, sum of widths) float32, ok mask, ConcatStats) for data.Samples.

    A photo is ok only if every part could read it (its row is zero otherwise). `load_for(pre)`:
    the `load` of a part with preprocessing `pre` (default its centre crop, `pre.load`; e.g. one
    refusing placeholders, graft.data.placeholders.RefuseNonPhotos, or the corner crops of --tta
    crops, whose features live under another `point` of the namespace)."""
    from graft.cache import FeatureCache

    if isinstance(source, str):
        source = resolve_backbone(source)
    names, paths = [s.digest for s in samples], [s.path for s in samples]
    stats = ConcatStats()
    blocks, ok = [], np.ones(len(samples), bool)
    for part in source.parts:
        cache = FeatureCache(cache_root, cache_namespace(part, point))
        load = load_for(part.preprocessing) if load_for else part.preprocessing.load
        feats, part_ok, st = extract_features(part.build, names, paths, cache, load=load,
                                              batch_size=batch_size, workers=workers, progress=progress,
                                              desc=f"{desc} ({part.spec})", dist=dist)
        stats.parts[part.spec] = st
        blocks.append(feats)
        ok &= part_ok
    widths = [b.shape[1] for b in blocks]
    if 0 in widths and len(samples) and ok.any():  # a part produced nothing although photos were read
        raise GraftError(f"backbone {source.spec}: a part produced no features")
    feats = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(samples), 0), np.float32)
    feats[~ok] = 0.0
    return feats, ok, stats


class JoinedCache:
    """The FeatureCache interface (`refresh`, `get`) over a concatenation's parts: a photo's row
    is its parts' cached rows side by side, and it misses when any part misses. What lets
    `graft predict --cache-dir` answer a concatenated run's already extracted photos without
    the networks, as it does for a single backbone."""

    def __init__(self, parts, cache_root, point: str = "pooled"):
        """`parts`: a ConcatSource's or a built ConcatBackbone's parts (what names a namespace)."""
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
