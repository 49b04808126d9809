"""Concatenated backbones: `--backbone lite0+lite2` describes a photo by both networks' pooled
features side by side, and the head learns from the concatenation.

Why: different networks see different things (resolution, depth), and a linear probe on their
joined features can beat either alone, at the cost of running both. Each part stays an ordinary
backbone with its own preprocessing, so its features are exactly the ones it computes alone
(graft.features.concat reads and fills each part's own cache namespace: a photo extracted for
`lite0` is never recomputed for `lite0+lite2`). The parts' crops travel as one tiled image
(graft.backbones.preprocess.Tiled), so a concatenated run predicts, exports and serves through
the very code a single backbone does. Only frozen features concatenate: fine-tuning two networks
at once is not supported (graft.train refuses it in one line).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
from torch import nn

from graft.backbones._base import Backbone, WeightsInfo
from graft.backbones.preprocess import Tiled
from graft.backbones.spec import SEP, join_specs


def joined_weights(parts) -> WeightsInfo:
    """One identity for the parts' weights: a digest of their digests (each part's own file and
    digest are what a run records and checks, in its "parts")."""
    digest = hashlib.sha256(SEP.join(p.weights.digest for p in parts).encode()).hexdigest()
    return WeightsInfo("the parts: " + ", ".join(p.spec for p in parts), digest)


class ConcatBackbone(nn.Module):
    """Tiled uint8-normalised canvas (graft.backbones.preprocess.Tiled) -> the parts' pooled
    features concatenated, in the order of the spec. No stages: it is never fine-tuned."""

    def __init__(self, parts: list[Backbone], spec: str):
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.spec = spec
        self.arch = join_specs(p.arch for p in parts)
        self.preprocessing = Tiled(tuple(p.preprocessing for p in parts))
        self.weights = joined_weights(parts)
        self.feature_dim = sum(int(p.feature_dim) for p in parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tiles = self.preprocessing.split(x)
        return torch.cat([p(t).flatten(1) for p, t in zip(self.parts, tiles)], dim=1)


@dataclass
class ConcatSource:
    """The verified parts of a concatenated backbone, nothing built: what the feature cache's
    parts, a saved run and `--backbone auto` record. The interface of registry.BackboneSource
    (a single backbone is the one part of itself), so callers read both alike."""

    spec: str
    parts: list  # [registry.BackboneSource]
    _built: ConcatBackbone | None = field(default=None, repr=False)
    frozen_only = True  # the parts' frozen features only: no fine-tuning, no augmented views, no --weights

    @property
    def arch(self) -> str:
        return join_specs(p.arch for p in self.parts)

    @property
    def weights(self) -> WeightsInfo:
        return joined_weights(self.parts)

    @property
    def preprocessing(self) -> Tiled:
        return Tiled(tuple(p.preprocessing for p in self.parts))

    def build(self) -> ConcatBackbone:
        if self._built is None:
            self._built = ConcatBackbone([p.build() for p in self.parts], self.spec)
        return self._built

    def describe_parts(self) -> list[dict]:
        """model.json's backbone "parts": each part's identity, found again part by part."""
        return [{"spec": p.spec, "arch": p.arch, "weights_source": p.weights.source,
                 "weights_digest": p.weights.digest} for p in self.parts]


def join_sources(spec: str, parts: list):
    """The source whose parts are `parts` (verified sources of single backbones), named `spec`:
    one part is itself, several a ConcatSource."""
    return parts[0] if len(parts) == 1 else ConcatSource(spec, list(parts))
