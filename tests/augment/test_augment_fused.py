"""Tests of the loader's fast path through a pipeline (graft.augment._fused): a run of colour ops
in one float pass (functional.color_twist) and a run of geometric ops in one resample
(functional.resample), each against the ops applied one by one with their own `apply`."""

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_augment import H, W, gen, gradient, one_thread  # noqa: F401  (one_thread: autouse)
from torchvision.transforms.v2 import functional as TF

from graft import augment as A
from graft.augment import functional as AF


def _steps_one_by_one(img, steps, dtype=torch.float32, rounded=True):
    """The reference for color_twist: torchvision's float kernels and a clamped offset, one step
    at a time, then rounded to uint8 once (or left unrounded in 0..255)."""
    f = img.to(dtype) / 255
    for kind, v in steps:
        if kind == "offset":
            f = (f + torch.tensor(v, dtype=dtype).view(3, 1, 1) / 255).clamp(0, 1)
        else:
            f = getattr(TF, f"adjust_{kind}")(f, v)
    return (f * 255).round().clamp(0, 255).to(torch.uint8) if rounded else f * 255


# Factors mostly up to 1: only those keep the image as k * x + t across steps (a factor above 1 or
# an offset forces a clamp, which resets the carried state), so long unclamped runs get drawn.
FACTOR = st.one_of(st.just(1.0), st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.floats(0.0, 2.5))
STEP = st.one_of(
    st.tuples(st.sampled_from(["brightness", "contrast", "saturation"]), FACTOR),
    st.tuples(st.sampled_from(["brightness", "contrast", "saturation"]), FACTOR),
    st.tuples(st.just("offset"), st.lists(st.floats(-300, 300), min_size=3, max_size=3)),
)


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(STEP, max_size=6), offset=st.integers(-60, 60))
@example(steps=[("contrast", 0.5), ("brightness", 0.5)], offset=0)  # a pending offset scaled later
@example(steps=[("contrast", 0.5), ("saturation", 0.2), ("contrast", 0.5)], offset=0)  # stale means
@example(steps=[("offset", [40, -20, 5]), ("saturation", 0.3), ("contrast", 0.6)], offset=0)
def test_color_twist_equals_the_steps_one_by_one(steps, offset):
    img = gradient(offset=offset)
    out = AF.color_twist(img, steps)
    exact = _steps_one_by_one(img, steps, torch.float64, rounded=False)
    assert out.dtype == torch.uint8 and out.shape == img.shape
    # Every pixel is the exact result rounded to a neighbouring level: only float32's rounding
    # (the fused order of operations differs) may tip a value sitting on a half.
    assert (out.double() - exact).abs().max() <= 0.5 + 1e-3
    if not steps:
        assert torch.equal(out, img)


@pytest.mark.parametrize("steps", [[("brightness", -1.0)], [("contrast", float("nan"))],
                                   [("offset", [0, float("inf"), 0])], [("offset", [1, 2])],
                                   [("brightnes", 1.0)]])
def test_color_twist_refuses_bad_steps(steps):
    with pytest.raises(ValueError):
        AF.color_twist(gradient(), steps)


def test_color_twist_clamps_between_steps():
    # A bright step then a dark one: without the clamp in between the highlights would come back.
    img = gradient()
    out = AF.color_twist(img, [("brightness", 2.0), ("brightness", 0.5)])
    assert out.max() <= 128 and (out == 128).sum() > 0
    assert torch.equal(out, _steps_one_by_one(img, [("brightness", 2.0), ("brightness", 0.5)]))
    shifted = AF.color_twist(img, [("offset", [300, 0, 0]), ("offset", [-300, 0, 0])])
    assert (shifted[0] == 0).all()  # clamped at 255 first, then everything back down to 0


def test_loader_colour_run_matches_the_ops_applied_one_by_one():
    # The reference is each op's own apply on a float64 image (0..1), not color_steps: a wrong
    # color_steps (order, units, sign) must show here.
    ops = [A.Flip(0.5), A.RGBShift(20, p=1.0), A.ColorJitter(0.4, 0.4, 0.4), A.PCAColor(0.5)]
    for seed in range(30):
        img = gradient(offset=seed * 5 - 50)
        params = A.Pipeline(ops).draw(gen(seed), (H, W))
        out = A.Pipeline(ops).apply_fused(img, params)
        f = ops[0].apply(img, params[0]).double() / 255
        for op, p in zip(ops[1:], params[1:]):
            f = op.apply(f, p)
        assert (out.double() - f * 255).abs().max() <= 0.5 + 1e-3


def smooth_photo(h, w, period, seed=0):
    """uint8 (3, h, w): per channel a tilt and three sine waves of `period` pixels, random directions."""
    g = gen(seed)
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    channels = []
    for c in range(3):
        v = 128 + (c - 1) * 20 * (x / w - 0.5)
        for _ in range(3):
            fx, fy, phase = torch.rand(3, generator=g, dtype=torch.float64).tolist()
            v = v + 25 * torch.sin(2 * math.pi * (((fx - 0.5) * x + (fy - 0.5) * y) / period + phase))
        channels.append(v)
    return torch.stack(channels).round().clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("size, knobs, shapes", [
    (96, "", [(120, 160), (60, 80), (600, 800)]),  # box 1-2x the output, smaller, and 2-6x (reduced first)
    ((16, 96), "rotate=60,shear=30", [(300, 400)]),  # thin frame, far-out corners: several reflections
])
def test_fused_geometry_equals_op_by_op_within_rounding(size, knobs, shapes):
    # The loader's path resamples crop, flip, rotation, shear and warp once; each op's own apply
    # resamples (and rounds to uint8) after every op. Both read the same source points, so on a
    # photo smooth at the output's scale (waves of 24 output pixels: no interpolation misses a
    # wave that long) they differ by: rounding, 0.5 level at most per rounding (four roundings op
    # by op, one fused: mean |diff| about 0.3); the slight blur of op by op's three extra bilinear
    # passes (under 5% of a 24-pixel wave's amplitude: a level or two at its crests); and a few
    # pixels on the creases where reflect padding folds the image, whose kink each interpolates
    # its own way. Measured: mean <= 0.34, 99th percentile <= 2, max <= 4 levels. A wrong map is
    # far off: a half-pixel shift of the crop box gives mean 0.95, a wrong rotation sign 14.
    pipe = A.build("heavy", f"rotate_p=1,shear_p=1,warp_p=1,{knobs}".strip(","), size=size)
    geo = A.Pipeline([op for op in pipe.ops if op.fuses is not None])
    assert [op.name for op in geo] == ["crop", "flip", "rotate", "shear", "local_warp"]
    for h, w in shapes:
        for seed in range(3):
            params = geo.draw(gen(seed), (h, w))
            out_h, out_w = geo.output_size((h, w))
            scale = max(1.0, params[0]["height"] / out_h, params[0]["width"] / out_w)
            img = smooth_photo(h, w, 24 * scale, seed)
            fused, reference = geo.apply_fused(img, params), geo.apply(img, params)
            assert fused.dtype == torch.uint8 and fused.shape == reference.shape
            diff = (fused.double() - reference.double()).abs()
            assert diff.mean() <= 0.5 and diff.quantile(0.99) <= 2 and diff.max() <= 8, (h, w, seed, params)


def test_fused_path_resamples_only_what_interpolates_twice():
    img = smooth_photo(60, 80, 10)
    crop_flip = A.Pipeline([A.RandomResizedCrop(32, scale=(0.3, 1.0)), A.Flip(0.5, 0.5)])
    zeros = A.Pipeline([A.RandomResizedCrop(32), A.Rotate(30, p=1, padding="zeros"), A.Shear(20, p=1, padding="zeros")])
    skipped = A.Pipeline([A.RandomResizedCrop(32), A.Rotate(30, p=0.0), A.LocalWarp(3, 4, p=0.0)])
    for pipe in (crop_flip, zeros, skipped):  # the crop's own antialiased resize; zero fill op by op
        for seed in range(4):
            params = pipe.draw(gen(seed), (60, 80))
            assert torch.equal(pipe.apply_fused(img, params), pipe.apply(img, params))
