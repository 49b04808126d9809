"""What a `--backbone` spec's text says before anything is resolved: the parts it joins with "+"
(`lite0+lite2`, graft.backbones.concat). Imports no torch: the recipe's settings refuse what a
concatenation cannot do (graft.recipe.config) before any photo is read or any weight is found."""

from __future__ import annotations

from graft.errors import GraftError

SEP = "+"


def is_joined(spec) -> bool:
    """Whether `spec` joins several backbones: what its resolved source will say as
    `frozen_only` (frozen features only: no fine-tuning, no augmented views, no --weights)."""
    return isinstance(spec, str) and SEP in spec


def split_spec(spec: str) -> list[str]:
    """"lite0+lite2" -> ["lite0", "lite2"]."""
    parts = [p.strip() for p in str(spec).split(SEP)]
    if any(not p for p in parts):
        raise GraftError(f"backbone {spec!r}: empty part; write parts joined by '+', e.g. lite0+lite2")
    if len(set(parts)) != len(parts):
        raise GraftError(f"backbone {spec!r} names a part twice")
    return parts


def join_specs(specs) -> str:
    """["lite0", "lite2"] -> "lite0+lite2": the spec of their concatenation."""
    return SEP.join(specs)
