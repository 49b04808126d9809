"""Per-sample flips and colour augmentation of a whole batch, on the batch's device (e.g. a GPU).

torchvision's v2 transforms draw one set of parameters per call, so every sample of a batch gets
the same flip and the same colour change, which correlates the batch. Here each sample gets its
own draw and the batch is processed in vectorised tensor operations (no loop over samples). The
result equals applying the per-image op to each sample with that sample's parameters
(`sample_params`), bit for bit for uint8 batches; float batches (0..1) may differ in the last bit
where contrast averages over the image.
"""

import torch

from ._color import ColorJitter, PCAColor, RGBShift
from ._geometry import Flip
from ._op import sample_params
from ._pipeline import Pipeline

BATCHABLE = (Flip, ColorJitter, PCAColor, RGBShift)

__all__ = ["BATCHABLE", "BatchPipeline", "sample_params", "split"]


class BatchPipeline:
    """Apply batchable ops (Flip, ColorJitter, PCAColor, RGBShift) in order to (N, 3, H, W)
    batches, uint8 or float 0..1, with a separate random draw per sample.

    params: a list with one dict per op, each value a CPU tensor whose first dimension is the
    sample; `sample_params(params[k], i)` is sample i's per-image params for op k.
    """

    def __init__(self, ops):
        self.ops = list(ops)
        for op in self.ops:
            if not isinstance(op, BATCHABLE):
                raise ValueError(
                    f"augment op {op.name!r} cannot be applied per sample to a batch; batchable ops: "
                    + ", ".join(cls.name for cls in BATCHABLE)
                )

    def draw(self, generator: torch.Generator | None, n: int) -> list[dict]:
        return [op.draw_batch(generator, n) for op in self.ops]

    def apply(self, batch: torch.Tensor, params: list[dict]) -> torch.Tensor:
        if batch.ndim != 4:
            raise ValueError(f"expected an (N, C, H, W) batch, got shape {tuple(batch.shape)}")
        for op, p in zip(self.ops, params, strict=True):
            batch = op.apply_batch(batch, p)
        return batch

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(batch, self.draw(generator, batch.shape[0]))

    def describe(self) -> dict:
        """{op name: hyperparameters} in application order; JSON-able."""
        return {op.name: op.hparams() for op in self.ops}

    def __len__(self) -> int:
        return len(self.ops)

    def __repr__(self) -> str:
        return f"BatchPipeline({self.ops!r})"


def split(pipeline: Pipeline) -> tuple[Pipeline, BatchPipeline]:
    """Split `pipeline` into the ops to run per image in the loader (crop, rotation, shear, warp)
    and the batchable ops (flips, colour) to run on the batch afterwards, each part keeping its
    relative order. In the presets' order only flips move: moving a flip after rotation, shear or
    warping leaves the distribution of outputs unchanged, since those draw angles and fields
    symmetric about zero. (A colour op placed before geometry would see a slightly different
    image once moved after it.)"""
    per_image = [op for op in pipeline.ops if not isinstance(op, BATCHABLE)]
    per_batch = [op for op in pipeline.ops if isinstance(op, BATCHABLE)]
    return Pipeline(per_image), BatchPipeline(per_batch)
