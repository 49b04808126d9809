"""torchvision.transforms.v2.functional, imported on first use.

Building a pipeline must not import torchvision (about 1.5 s): a warm rerun needs the pipeline
only for its key, which names the cached augmented views, and never runs a kernel (issue 21)."""

from __future__ import annotations

import importlib

MODULE = "torchvision.transforms.v2.functional"


class _OnFirstUse:
    """Stands for `MODULE` (or one of its attributes): any attribute read imports it."""

    def __init__(self, attr: str | None = None):
        self._attr = attr

    def __getattr__(self, name):
        target = importlib.import_module(MODULE)
        return getattr(getattr(target, self._attr) if self._attr else target, name)


F = _OnFirstUse()
InterpolationMode = _OnFirstUse("InterpolationMode")
