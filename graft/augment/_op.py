"""The contract every augmentation op follows: a random draw, separate from a deterministic apply.

`draw(generator, (H, W))` turns a torch.Generator's state into a small dict of plain Python
numbers; it needs only the image's size, never its pixels, so a loader can draw before decoding.
`apply(img, params)` is a pure function of the image and those numbers. Keeping them apart makes
every augmented image reproducible from a seed, loggable as JSON, and testable.

As in torchvision v2 (`Transform.make_params` / `transform`, and `_RandomApplyTransform` for the
probability), an op writes only its own `make_params` and `transform`: the coin flip of `p` is
drawn once here (`RandomOp`), and params that leave the image unchanged are recognised once here
(`Op.apply`), so no op repeats either.
"""

import dataclasses

import torch


class Op:
    """Base of the op classes (dataclasses whose fields are the op's hyperparameters).

    Subclasses set `name`, implement `make_params` and `transform`, and may set:
    - `unchanged`: the params values that leave every image as it is (e.g. {"angle": 0.0});
      `apply` then returns the image itself for them, without calling `transform`;
    - `batchable = True` when `transform` also takes per-sample params: each value with a leading
      sample dimension (see `stack_params`), one row per image of an (N, C, H, W) batch.
    Geometric ops also state where each pixel of their output reads from in their input
    (`source_map`), so that a run of them is resampled once (Pipeline.apply_fused); `fuses`
    says where in such a run the op may stand: "first" (the crop, which reads the source),
    "inner", or "last" (the local warp, whose field lives on its own output's pixels).
    `interpolates`: the op's own transform resamples the image (a flip does not).
    Generators must be CPU generators; images may live on any device.
    """

    name = "op"  # key of the op in configs and presets; subclasses set it
    unchanged: dict | None = None
    batchable = False
    fuses: str | None = None
    interpolates = False

    def draw(self, generator: torch.Generator | None, size: tuple[int, int]) -> dict:
        """This op's parameters for one image of `size` (H, W)."""
        return self.make_params(generator, size)

    def make_params(self, generator: torch.Generator | None, size: tuple[int, int]) -> dict:
        raise NotImplementedError

    def apply(self, img: torch.Tensor, params: dict) -> torch.Tensor:
        """Apply `params` (one image's, or per-sample for a batchable op) to `img`."""
        return img if self.is_unchanged(params) else self.transform(img, params)

    def is_unchanged(self, params: dict) -> bool:
        """True when `params` leave every image as it is (a skipped draw, or zero strength)."""
        return self.unchanged is not None and all(_equal(params[k], v) for k, v in self.unchanged.items())

    def transform(self, img: torch.Tensor, params: dict) -> torch.Tensor:
        raise NotImplementedError

    def source_map(self, params: dict, size: tuple[int, int]):
        """Geometric ops: a functional.PointMap, where each pixel of this op's output (of `size`)
        reads from in its input."""
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


class RandomOp(Op):
    """An op applied with probability `p` (a dataclass field of the subclass), as torchvision v2's
    _RandomApplyTransform: the coin comes first, then the op's own values. A skipped draw still
    draws its values (then overrides them with `unchanged`), so every draw consumes the same
    amount of the generator whatever the outcome, and changing one op's probability does not
    reshuffle the draws of the ops after it.
    """

    def __post_init__(self):
        self.p = check_range("p", self.p, 0, 1)

    def draw(self, generator, size) -> dict:
        coin = uniform(generator, 1).item()
        params = self.make_params(generator, size)
        return params if coin < self.p else {**params, **self.unchanged}

    @property
    def is_identity(self) -> bool:
        return self.p == 0 or self.zero_strength

    @property
    def zero_strength(self) -> bool:
        """True when the op's strength hyperparameters make every draw `unchanged`."""
        raise NotImplementedError


def stack_params(draws: list[dict]) -> dict:
    """One op's per-image draws (a list of dicts) as per-sample params: each key a CPU tensor
    whose first dimension is the sample (float64 numbers, or bools), for a batchable op's apply."""
    if not draws:
        raise ValueError("stack_params needs at least one draw")
    stacked = {}
    for key in draws[0]:
        values = [d[key] for d in draws]
        dtype = torch.bool if all(isinstance(v, bool) for v in values) else torch.float64
        stacked[key] = torch.as_tensor(values, dtype=dtype)
    return stacked


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


def _equal(value, neutral) -> bool:
    """One image's value (a number, bool or list), or a per-sample tensor, equal to `neutral` for
    every sample (-0.0 counts as 0.0)."""
    if isinstance(value, torch.Tensor):
        return bool((value == torch.as_tensor(neutral, dtype=value.dtype)).all())
    return value == neutral


def _jsonable(value):
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value
