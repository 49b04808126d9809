"""Module attributes loaded on first use (PEP 562): a package names what lives in its heavier
modules without importing them, so commands that never build a network never import torch."""

from __future__ import annotations

import importlib


def lazy_attributes(package: str, namespace: dict, table: dict[str, str], extra: dict[str, str] | None = None):
    """(__getattr__, __dir__) for `package`: `table` maps a name to the relative module holding it;
    `extra` maps a name to a relative module that is itself the attribute (e.g. a subpackage)."""
    extra = extra or {}

    def __getattr__(name):
        if name in extra:
            return importlib.import_module(extra[name], package)
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(table[name], package), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(table) | set(extra))

    return __getattr__, __dir__
