"""The contract every augmentation op follows: a random draw, separate from a deterministic apply.

`draw(generator, (H, W))` turns a torch.Generator's state into a small dict of plain Python
numbers; it needs only the image's size, never its pixels, so a loader can draw before decoding.
`apply(img, params)` is a pure function of the image and those numbers. Keeping them apart makes
every augmented image reproducible from a seed, loggable as JSON, and testable.
"""

import dataclasses

import torch


class Op:
    """Base of the op classes (dataclasses whose fields are the op's hyperparameters).

    Each draw consumes the same amount of the generator whatever the outcome (a skipped op still
    draws its values), so changing one op's probability does not reshuffle the draws of the ops
    after it. Generators must be CPU generators; images may live on any device.
    """

    name = "op"  # key of the op in configs and presets; subclasses set it

    def draw(self, generator: torch.Generator | None, size: tuple[int, int]) -> dict:
        raise NotImplementedError

    def apply(self, img: torch.Tensor, params: dict) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw parameters for this image's size and apply them."""
        return self.apply(img, self.draw(generator, tuple(img.shape[-2:])))

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of the output for an input of `size`."""
        return (int(size[0]), int(size[1]))

    @property
    def is_identity(self) -> bool:
        """True when every draw leaves every image unchanged (zero strength or zero probability)."""
        return False

    def hparams(self) -> dict:
        """The hyperparameters as a JSON-able dict (tuples become lists), keys in field order."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


def sample_params(params: dict, i: int) -> dict:
    """Sample `i`'s parameters, as plain Python numbers, out of a batched draw (tensors with a
    leading sample dimension): exactly what the op's per-image `apply` takes."""
    return {k: v[i].tolist() for k, v in params.items()}


def uniform(generator, *shape) -> torch.Tensor:
    """float64 uniform draws in [0, 1) of the given shape."""
    return torch.rand(shape, generator=generator, dtype=torch.float64)


def check_range(name: str, value, lo: float, hi: float, lo_open: bool = False) -> float:
    value = float(value)
    if not (lo < value if lo_open else lo <= value) or value > hi:
        bracket = "(" if lo_open else "["
        raise ValueError(f"{name} must be in {bracket}{lo:g}, {hi:g}], got {value:g}")
    return value


def check_pair(name: str, value, lo: float, hi: float, lo_open: bool = True) -> tuple[float, float]:
    """A (low, high) range with low <= high, both within the given bounds."""
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (low, high), got {value!r}") from None
    check_range(f"{name} low", a, lo, hi, lo_open)
    check_range(f"{name} high", b, lo, hi, lo_open)
    if a > b:
        raise ValueError(f"{name} low must be <= high, got ({a:g}, {b:g})")
    return (a, b)


def _jsonable(value):
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value
