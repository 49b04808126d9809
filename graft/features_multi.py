"""Concatenated backbones: `--backbone lite0+lite2` describes a photo by both networks' pooled
features side by side, and a head learns from the concatenation.

Why: different networks see different things (resolution, depth), and a linear probe on their
joined features can beat either alone at the cost of extracting both. Each part is an ordinary
backbone with its own preprocessing and its own feature-cache namespace, so a photo already
extracted by `lite0` is never recomputed for `lite0+lite2`, and dropping a part costs nothing.
Only frozen features concatenate: fine-tuning two networks at once is not supported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .backbones import BackboneSource, resolve_backbone
from .errors import GraftError
from .features import ExtractStats, cache_namespace, extract_features

SEP = "+"


def is_concat(spec) -> bool:
    return isinstance(spec, str) and SEP in spec


def split_spec(spec: str) -> list[str]:
    """"lite0+lite2" -> ["lite0", "lite2"]; a plain spec is one part."""
    parts = [p.strip() for p in str(spec).split(SEP)]
    if any(not p for p in parts):
        raise GraftError(f"backbone {spec!r}: empty part; write parts joined by '+', e.g. lite0+lite2")
    if len(set(parts)) != len(parts):
        raise GraftError(f"backbone {spec!r} names a part twice")
    return parts


@dataclass
class ConcatSource:
    """The verified parts of a concatenated backbone (nothing built): what a run records."""

    spec: str
    parts: list[BackboneSource]

    @property
    def arch(self) -> str:
        return SEP.join(p.arch for p in self.parts)

    def describe(self, dims: list[int] | None = None) -> dict:
        """The backbone entry of model.json / metrics.json: each part's identity and, once known,
        its width, so feature columns can be traced back to the network that made them."""
        out = []
        for i, p in enumerate(self.parts):
            d = {"spec": p.spec, "arch": p.arch, "weights_source": p.weights.source,
                 "weights_digest": p.weights.digest, "preprocessing": p.preprocessing.to_json()}
            if dims is not None:
                d["feature_dim"] = int(dims[i])
            out.append(d)
        return {"spec": self.spec, "arch": self.arch, "parts": out}


def resolve_concat(spec: str, weights=None) -> ConcatSource:
    """Resolve every part of `spec` (configuration errors first, nothing built)."""
    if weights is not None:
        raise GraftError(f"--weights names one file, but {spec!r} concatenates several backbones: "
                         f"give each part its own cached or bundled weights")
    return ConcatSource(spec, [resolve_backbone(p) for p in split_spec(spec)])


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
                    workers: int | None = None, progress: bool = True, dist=None):
    """-> (features (N, sum of widths) float32, ok mask, ConcatStats) for data.Samples.

    Each part reads and fills its own cache namespace (the same one a run with that backbone
    alone uses), so only what is missing from a part is computed, by that part alone. A photo
    is ok only if every part could read it."""
    from .cache import FeatureCache

    if isinstance(source, str):
        source = resolve_concat(source)
    names, paths = [s.digest for s in samples], [s.path for s in samples]
    stats = ConcatStats()
    blocks, ok = [], np.ones(len(samples), bool)
    for part in source.parts:
        cache = FeatureCache(cache_root, cache_namespace(part))
        feats, part_ok, st = extract_features(part.build, names, paths, cache, load=part.preprocessing.load,
                                              batch_size=batch_size, workers=workers, progress=progress,
                                              desc=f"features ({part.spec})", dist=dist)
        stats.parts[part.spec] = st
        blocks.append(feats)
        ok &= part_ok
    widths = [b.shape[1] for b in blocks]
    if 0 in widths and len(samples) and ok.any():  # a part produced nothing although photos were read
        raise GraftError(f"backbone {source.spec}: a part produced no features")
    feats = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(samples), 0), np.float32)
    feats[~ok] = 0.0
    return feats, ok, stats


def concat_batches(backbones, paths, *, batch_size: int = 32, workers: int | None = None):
    """-> (features (N, sum of widths), ok mask, [{path, reason}]) for image files, through each
    built part's own preprocessing and loader, without the cache: what predicting new photos
    with a concatenated run needs."""
    from .loader import image_loader

    blocks, ok, skipped, seen = [], np.ones(len(paths), bool), [], set()
    for bb in backbones:
        bb.eval()
        pre = bb.preprocessing
        out = np.zeros((len(paths), bb.feature_dim), np.float32)
        with torch.inference_mode():
            for idx, batch, errors in image_loader(paths, pre.load, batch_size=batch_size, workers=workers):
                for i, e in errors:
                    ok[i] = False
                    if e.path not in seen:
                        seen.add(e.path)
                        skipped.append({"path": e.path, "reason": e.reason})
                if batch is not None:
                    x = pre.normalize(batch).contiguous(memory_format=torch.channels_last)
                    out[idx] = bb(x).flatten(1).float().numpy()
        blocks.append(out)
    feats = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(paths), 0), np.float32)
    feats[~ok] = 0.0
    return feats, ok, skipped
