"""The loader's fast path through a pipeline: one resample per run of geometric ops, one float
pass per run of colour ops.

Applied op by op, the heavy preset interpolates a photo up to four times (crop and resize,
rotation, shear, local warp), padding and rounding to uint8 each time, and adjusts colour in two
dozen passes. Here a run of geometric ops (a crop first, then flips, rotation and shear, a local
warp last) chains their maps of points (Op.source_map) from the output's pixels back to the
source and reads it once (functional.resample), and a run of colour ops goes through
functional.color_twist. Each op's own `apply` stays the reference (and what previews use): the
result equals it up to interpolation and rounding (tests/augment/test_augment_fused.py says how closely).
"""

import math

import torch

from graft.augment import functional as AF


def apply_fused(ops, img: torch.Tensor, params) -> torch.Tensor:
    """Apply `ops` with their `params` to one uint8 (3, H, W) image, fusing runs as above."""
    i = 0
    while i < len(ops):
        j = _geometric_run(ops, i)
        if j > i:
            img = _resample_run(ops[i:j], img, params[i:j])
            i = j
            continue
        while j < len(ops) and hasattr(ops[j], "color_steps"):
            j += 1
        if j > i:
            img = AF.color_twist(img, [step for op, p in zip(ops[i:j], params[i:j]) for step in op.color_steps(p)])
            i = j
        else:
            img = ops[i].apply(img, params[i])
            i += 1
    return img


def _resample_run(ops, img: torch.Tensor, params) -> torch.Tensor:
    """A run of geometric ops (see `_geometric_run`) read from `img` in one resample.

    Unless two or more of them interpolate, each op's own kernel runs instead: a crop alone (and
    flips) is a plain resize, which torchvision's antialiased bicubic kernel does better and
    faster than bilinear reads. With a crop first, only its box is read (and, when the box is two
    or more times the output, reduced first: see functional.resample).
    """
    if sum(op.interpolates and not op.is_unchanged(p) for op, p in zip(ops, params)) < 2:
        for op, p in zip(ops, params):
            img = op.apply(img, p)
        return img
    params, block = list(params), 1
    if ops[0].fuses == "first":  # the crop: read its box only
        top, left, height, width = (params[0][k] for k in ("top", "left", "height", "width"))
        img = img[..., top:top + height, left:left + width]
        params[0] = {"top": 0, "left": 0, "height": height, "width": width}
        out_h, out_w = ops[0].output_size((height, width))
        block = math.floor(min(height / out_h, width / out_w))
    sizes = [tuple(img.shape[-2:])]
    for op in ops:
        sizes.append(op.output_size(sizes[-1]))
    maps = [op.source_map(p, size) for op, p, size in zip(ops, params, sizes[1:])]
    return AF.resample(img, maps[::-1], sizes[-1], block)


def _geometric_run(ops, i: int) -> int:
    """End (exclusive) of the run of fusable geometric ops starting at ops[i]: a "first" op only
    starts one, a "last" op ends it. i itself when ops[i] does not fuse."""
    j = i
    while j < len(ops) and ops[j].fuses is not None and (ops[j].fuses != "first" or j == i):
        j += 1
        if ops[j - 1].fuses == "last":
            break
    return j
