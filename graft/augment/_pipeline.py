"""A sequence of augmentation ops driven by one generator, and its JSON-able config.

`Pipeline` chains ops, keeping the draw/apply split across all of them (a loader can draw every
op's parameters from the file's header size before decoding); the same type runs a pipeline of
batchable ops on a whole batch with one draw per sample. `AugConfig` is the serialisable form
stored in a run's JSON file; its `key()` names caches of augmented data.
"""

import dataclasses
import hashlib
import json
from dataclasses import dataclass

import torch

from graft.augment._color import ColorJitter, PCAColor, RGBShift
from graft.augment._fused import apply_fused
from graft.augment._geometry import Flip, LocalWarp, RandomResizedCrop, Rotate, Shear
from graft.augment._op import Op, stack_params

# Every op by config name, in the order presets apply them: geometry first (the crop fixes the
# size the others work at), then colour.
OPS: dict[str, type[Op]] = {
    op.name: op for op in (RandomResizedCrop, Flip, Rotate, Shear, LocalWarp, ColorJitter, PCAColor, RGBShift)
}


class Pipeline:
    """Apply `ops` in order. params of the whole pipeline are a list with one dict per op."""

    def __init__(self, ops):
        self.ops = list(ops)
        names = [op.name for op in self.ops]
        if len(set(names)) != len(names):
            raise ValueError(f"a pipeline holds each op at most once, got {names}")

    def draw(self, generator: torch.Generator | None, size: tuple[int, int]) -> list[dict]:
        """Every op's parameters for an input of `size` (H, W); each op gets the size its
        predecessors produce (a crop changes it)."""
        params = []
        for op in self.ops:
            params.append(op.draw(generator, size))
            size = op.output_size(size)
        return params

    def apply(self, img: torch.Tensor, params: list[dict]) -> torch.Tensor:
        for op, p in zip(self.ops, params, strict=True):
            img = op.apply(img, p)
        return img

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(img, self.draw(generator, tuple(img.shape[-2:])))

    def apply_fused(self, img: torch.Tensor, params: list[dict]) -> torch.Tensor:
        """`apply` for one uint8 (3, H, W) image the fast way (the loader's): each run of geometric
        ops resampled once, each run of colour ops in one float pass; equal to `apply` up to
        interpolation and rounding (see graft.augment._fused)."""
        return apply_fused(self.ops, img, params)

    def apply_per_sample(self, batch: torch.Tensor, draws: list[list[dict]]) -> torch.Tensor:
        """Apply sample i's own draw (`draws[i]`, as from `draw`) to each sample of an
        (N, C, H, W) batch, uint8 or float 0..1, on the batch's device, in vectorised tensor
        operations (torchvision's v2 transforms give a whole batch one draw, which correlates
        it). Only batchable ops (flips, colour) can; the result equals `apply` per sample, bit
        for bit for uint8 batches (float ones may differ in the last bit)."""
        for op in self.ops:
            if not op.batchable:
                batchable = ", ".join(name for name, cls in OPS.items() if cls.batchable)
                raise ValueError(
                    f"augment op {op.name!r} cannot be applied per sample to a batch; batchable ops: {batchable}"
                )
        if batch.ndim != 4 or len(draws) != len(batch):
            raise ValueError(
                f"expected an (N, C, H, W) batch and N draws, got shape {tuple(batch.shape)} and {len(draws)} draws"
            )
        for k, op in enumerate(self.ops):
            batch = op.apply(batch, stack_params([d[k] for d in draws]))
        return batch

    def split_batchable(self) -> tuple["Pipeline", "Pipeline"]:
        """(the ops to run per image in the loader: crop, rotation, shear, warp; the batchable ops,
        flips and colour, to run per sample on the batch afterwards), each keeping its relative
        order. In the presets' order only flips move: moving a flip after rotation, shear or
        warping leaves the distribution of outputs unchanged, since those draw angles and fields
        symmetric about zero. (A colour op placed before geometry would see a slightly different
        image once moved after it.)"""
        return (Pipeline(op for op in self.ops if not op.batchable), Pipeline(op for op in self.ops if op.batchable))

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        for op in self.ops:
            size = op.output_size(size)
        return tuple(size)

    def describe(self) -> dict:
        """{op name: hyperparameters} in application order; JSON-able."""
        return {op.name: op.hparams() for op in self.ops}

    def config(self) -> "AugConfig":
        return AugConfig(self.describe())

    def __len__(self) -> int:
        return len(self.ops)

    def __iter__(self):
        return iter(self.ops)

    def __repr__(self) -> str:
        return f"Pipeline({self.ops!r})"


@dataclass(frozen=True)
class AugConfig:
    """Op name -> hyperparameters, in application order (names as in OPS).

    Construction validates every op and fills in defaults, so two configs building the same
    pipeline compare equal and share `key()` (e.g. {"rotate": {"degrees": 15}} and
    {"rotate": {"degrees": 15.0, "p": 0.5, "padding": "reflect"}}).
    """

    ops: dict

    def __post_init__(self):
        object.__setattr__(self, "ops", {op.name: _sorted(op.hparams()) for op in _build_ops(self.ops)})

    def build(self) -> Pipeline:
        return Pipeline(_build_ops(self.ops))

    def to_json(self, indent: int | None = None) -> str:
        """Canonical JSON: op order kept, each op's keys sorted."""
        separators = (",", ":") if indent is None else (",", ": ")
        return json.dumps(self.ops, indent=indent, separators=separators)

    @classmethod
    def from_json(cls, text: str) -> "AugConfig":
        return cls(json.loads(text))

    def key(self) -> str:
        """First 16 hex digits of the sha256 of the canonical JSON: a cache key."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


def _build_ops(ops: dict) -> list[Op]:
    if not isinstance(ops, dict):
        raise ValueError(f"an augment config maps op names to hyperparameters, got {type(ops).__name__}")
    built = []
    for name, hparams in ops.items():
        if name not in OPS:
            raise ValueError(f"unknown augment op {name!r}; valid ops: {', '.join(OPS)}")
        valid = [f.name for f in dataclasses.fields(OPS[name])]
        unknown = sorted(set(hparams or {}) - set(valid))
        if unknown:
            raise ValueError(f"augment op {name!r}: unknown hyperparameter {unknown[0]!r}; valid: {', '.join(valid)}")
        try:
            built.append(OPS[name](**(hparams or {})))
        except ValueError as e:
            raise ValueError(f"augment op {name!r}: {e}") from None
    return built


def _sorted(d: dict) -> dict:
    return {k: d[k] for k in sorted(d)}
