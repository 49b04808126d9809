"""Pretrained backbones: the registry (`default`, `lite0`/`lite1`/`lite2`, `timm:<name>`, `tv:<name>`; registry.py), the
`Backbone` they all become (_base.py), concatenations of them (`lite0+lite2`; concat.py; what a spec's text joins,
spec.py), their weights (weights.py) and evaluation preprocessing (preprocess.py).

The names below load their module on first use: `graft.backbones.preprocess` (what a photo
becomes before the network) is needed by commands that never build a network, and must not
import torch for them.
"""

from __future__ import annotations

from graft._util.lazy import lazy_attributes

_LAZY = {
    "Backbone": "._base",
    "WeightsInfo": "._base",
    "BackboneSource": ".registry",
    "ConcatBackbone": ".concat",
    "ConcatSource": ".concat",
    "join_sources": ".concat",
    "is_joined": ".spec",
    "DEFAULT_ARCH": ".registry",
    "DEFAULT_PREPROCESSING": ".registry",
    "BUNDLED": ".registry",
    "DEFAULT_BUNDLED": ".registry",
    "load_backbone": ".registry",
    "rebuild_backbone": ".registry",
    "resolve_backbone": ".registry",
    "zip_state_dicts": ".registry",
    "lukemelas_ordered": ".registry",
}

__all__ = ["Backbone", "BackboneSource", "ConcatBackbone", "ConcatSource", "load_backbone", "resolve_backbone", "rebuild_backbone",
           "WeightsInfo", "BUNDLED", "DEFAULT_BUNDLED"]


__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY)
