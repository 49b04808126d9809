"""Pretrained backbones: the registry (`default`, `lite0`/`lite1`/`lite2`, `timm:<name>`, `tv:<name>`; registry.py), the
`Backbone` they all become (_base.py), their weights (weights.py) and evaluation preprocessing
(preprocess.py).

The names below load their module on first use: `graft.backbones.preprocess` (what a photo
becomes before the network) is needed by commands that never build a network, and must not
import torch for them.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "Backbone": "._base",
    "WeightsInfo": "._base",
    "BackboneSource": ".registry",
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

__all__ = ["Backbone", "BackboneSource", "load_backbone", "resolve_backbone", "rebuild_backbone",
           "WeightsInfo", "BUNDLED", "DEFAULT_BUNDLED"]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
