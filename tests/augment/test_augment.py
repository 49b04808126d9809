"""Tests of graft.augment: every op's contract (shape, dtype, range, seeded determinism, exact
identity at zero strength, size-only draws), the base classes' coin and identity, PCA colour
against a hand computation, batched ops against per-image ops, and configs. The loader's fast
path is in test_augment_fused.py; presets, overrides and the preview in test_augment_presets.py."""

import dataclasses
import inspect
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from graft import augment as A
from graft.augment import functional as AF

H, W = 48, 64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny images: thread start-up costs more than it saves, badly so on a busy 2-core machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def gradient(h=H, w=W, offset=0, low=0):
    """A synthetic photo: red ramps left to right, green top to bottom, blue is a checkerboard."""
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    img = torch.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), ((x // 8 + y // 8) % 2) * 200 + 20])
    return (img + offset).clamp(low, 255).to(torch.uint8)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def batch_of(n=6, h=H, w=W):
    return torch.stack([gradient(h, w, offset=17 * i - 40).roll(5 * i, dims=-1) for i in range(n)])


# name -> (an op at some strength, the same op at zero strength)
CASES = {
    "flip": (A.Flip(0.5, 0.5), A.Flip(0.0, 0.0)),
    "crop": (A.RandomResizedCrop(32, scale=(0.2, 1.0)), A.RandomResizedCrop((H, W), scale=(1.0, 1.0))),
    "rotate": (A.Rotate(30, p=0.8), A.Rotate(0, p=1.0)),
    "shear": (A.Shear(20, p=0.8), A.Shear(0, p=1.0)),
    "local_warp": (A.LocalWarp(3.0, 4.0, p=0.8), A.LocalWarp(0.0, 4.0, p=1.0)),
    "color_jitter": (A.ColorJitter(0.4, 0.4, 0.4, p=0.8), A.ColorJitter(0, 0, 0)),
    "pca_color": (A.PCAColor(0.5, p=0.8), A.PCAColor(0.0)),
    "rgb_shift": (A.RGBShift(20, p=0.8), A.RGBShift(0, p=1.0)),
    "rgb_shift_uniform": (A.RGBShift(20, "uniform", p=0.8), A.RGBShift(0, "uniform")),
}
NEVER = [A.Rotate(30, p=0), A.Shear(20, p=0), A.LocalWarp(5, 4, p=0), A.ColorJitter(0.4, 0.4, 0.4, p=0),
         A.PCAColor(0.5, p=0), A.RGBShift(20, p=0)]


def plain(value):
    """True if `value` is made of plain Python numbers, bools and lists (JSON-able)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(plain(v) for v in value)
    return isinstance(value, (bool, int, float))


# ---------------------------------------------------------------- every op's contract


@pytest.mark.parametrize("name", CASES)
def test_shape_dtype_range(name):
    op = CASES[name][0]
    img = gradient()
    for seed in range(4):
        out = op(img, gen(seed))
        assert out.shape == (3, *op.output_size((H, W)))
        assert out.dtype == torch.uint8
        out_f = op(img.float() / 255, gen(seed))
        assert out_f.dtype == torch.float32 and out_f.shape == out.shape
        assert 0 <= out_f.min() and out_f.max() <= 1
    batch = op(batch_of(2), gen(0))  # per-image ops accept a batch (one draw for all of it)
    assert batch.shape == (2, 3, *op.output_size((H, W))) and batch.dtype == torch.uint8


@pytest.mark.parametrize("name", CASES)
def test_seeded_determinism(name):
    op = CASES[name][0]
    img = gradient()
    assert torch.equal(op(img, gen(7)), op(img, gen(7)))
    assert op.draw(gen(7), (H, W)) == op.draw(gen(7), (H, W))
    draws = [json.dumps(op.draw(gen(seed), (H, W)), sort_keys=True) for seed in range(8)]
    assert len(set(draws)) > 1
    outputs = {op(img, gen(seed)).numpy().tobytes() for seed in range(8)}
    assert len(outputs) > 1


@pytest.mark.parametrize("op", [zero for _, zero in CASES.values()] + NEVER, ids=repr)
def test_zero_strength_is_identity(op):
    for img in (gradient(), gradient().float() / 255, batch_of(2)):
        for seed in range(3):
            assert torch.equal(op(img, gen(seed)), img)
    if not isinstance(op, A.RandomResizedCrop):
        assert op.is_identity


@pytest.mark.parametrize("name", CASES)
def test_draw_needs_only_the_size(name):
    op = CASES[name][0]
    assert list(inspect.signature(op.draw).parameters) == ["generator", "size"]
    for seed in range(4):
        params = op.draw(gen(seed), (H, W))
        assert plain(params)
        json.dumps(params)
        for img in (gradient(), gradient(offset=60).flip(-1)):  # same size, other pixels
            assert torch.equal(op(img, gen(seed)), op.apply(img, params))


def test_only_strength_zero_ops_claim_identity():
    assert not any(op.is_identity for op, _ in CASES.values())


# ---------------------------------------------------------------- geometry


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 400),
    w=st.integers(1, 400),
    lo=st.floats(0.01, 1.0),
    ratio_lo=st.floats(0.2, 1.0),
    ratio_hi=st.floats(1.0, 5.0),
    seed=st.integers(0, 2**31),
)
def test_crop_box_inside_the_image(h, w, lo, ratio_lo, ratio_hi, seed):
    op = A.RandomResizedCrop(16, scale=(lo, 1.0), ratio=(ratio_lo, ratio_hi))
    box = op.draw(gen(seed), (h, w))
    assert all(isinstance(v, int) for v in box.values())
    assert 0 <= box["top"] and box["top"] + box["height"] <= h and box["height"] >= 1
    assert 0 <= box["left"] and box["left"] + box["width"] <= w and box["width"] >= 1


def test_crop_box_scales_to_a_reduced_decode():
    op = A.RandomResizedCrop(32, scale=(0.1, 0.5))
    for seed in range(20):
        box = op.draw(gen(seed), (480, 640))
        small = A.RandomResizedCrop.scale_params(box, (480, 640), (120, 160))
        assert small["top"] + small["height"] <= 120 and small["left"] + small["width"] <= 160
        for key in box:
            assert abs(small[key] - box[key] / 4) <= 1


def test_crop_whole_image_at_scale_one():
    op = A.RandomResizedCrop(32, scale=(1.0, 1.0))
    assert op.draw(gen(0), (30, 200)) == {"top": 0, "left": 0, "height": 30, "width": 200}


def test_reflect_padding_fills_uncovered_corners():
    img = gradient(low=10)  # no black pixel anywhere
    for op in (A.Rotate(45, p=1), A.Shear(30, p=1), A.LocalWarp(6, 3, p=1), A.Rotate(170, p=1)):
        for seed in range(3):
            assert op(img, gen(seed)).min() > 0, op
    assert A.Rotate(45, p=1, padding="zeros")(img, gen(0)).min() == 0


def test_rotate_is_torchvision_rotate_with_zero_fill():
    img = gradient()
    expected = TF.rotate(img, 12.5, interpolation=TF.InterpolationMode.BILINEAR)
    assert torch.equal(AF.rotate(img, 12.5, padding="zeros"), expected)


def test_warp_field_strength_and_seed():
    a = AF.warp_field((H, W), alpha=2.5, sigma=6, seed=1)
    assert a.shape == (H, W, 2)
    assert math.isclose(a.square().mean().sqrt().item(), 2.5, rel_tol=1e-4)
    assert torch.equal(a, AF.warp_field((H, W), 2.5, 6, 1))
    assert not torch.equal(a, AF.warp_field((H, W), 2.5, 6, 2))


def test_bad_hyperparameters_are_rejected():
    for make in (lambda: A.Rotate(p=1.5), lambda: A.RandomResizedCrop(scale=(0, 1)),
                 lambda: A.RandomResizedCrop(scale=(0.8, 0.2)), lambda: A.RGBShift(distribution="gauss"),
                 lambda: A.Shear(padding="wrap"), lambda: A.PCAColor(eigvals=[1, 2, 3])):
        with pytest.raises(ValueError):
            make()


# ---------------------------------------------------------------- colour


EIGVECS = torch.linalg.qr(torch.tensor([[1.0, 0.2, 0.1], [0.9, -0.5, 0.3], [0.8, 0.4, -0.6]], dtype=torch.float64))[0].T


def test_pca_shift_is_the_alexnet_sum():
    eigvals, eigvecs = [0.05, 0.01, 0.002], EIGVECS.tolist()
    alphas = [0.3, -0.8, 1.7]
    op = A.PCAColor(sigma=0.1, eigvals=eigvals, eigvecs=eigvecs)
    shift = [sum(alphas[i] * eigvals[i] * eigvecs[i][c] for i in range(3)) for c in range(3)]
    img = gradient().clamp(60, 190)  # clear of the clamp
    out = op.apply(img, {"alphas": alphas})
    expected = img.double() + 255 * torch.tensor(shift, dtype=torch.float64).view(3, 1, 1)
    assert (out.double() - expected).abs().max() <= 0.5 + 1e-4
    img_f = img.double() / 255
    assert torch.allclose(op.apply(img_f, {"alphas": alphas}) - img_f,
                          torch.tensor(shift, dtype=torch.float64).view(3, 1, 1).expand(3, H, W), atol=1e-12)


def test_fit_pca_recovers_a_known_covariance():
    eigvals = torch.tensor([0.02, 0.005, 0.001], dtype=torch.float64)
    cov = EIGVECS.T @ torch.diag(eigvals) @ EIGVECS
    g = gen(0)
    pixels = 0.5 + torch.randn(120_000, 3, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T

    def check(vals, vecs, rel):
        assert isinstance(vals, list) and isinstance(vecs, list) and json.dumps([vals, vecs])
        vals, vecs = torch.tensor(vals, dtype=torch.float64), torch.tensor(vecs, dtype=torch.float64)
        assert torch.allclose(vals, eigvals, rtol=rel)
        assert torch.allclose(vecs.T @ torch.diag(vals) @ vecs, cov, atol=rel * 0.02)
        assert all(v[v.abs().argmax()] > 0 for v in vecs)

    check(*A.fit_pca(pixels), rel=0.03)
    images = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).T.reshape(3, 12, 100, 100).permute(1, 0, 2, 3)
    check(*A.fit_pca(list(images), pixels_per_image=5000), rel=0.06)
    check(*A.fit_pca(iter(Image.fromarray(im.permute(1, 2, 0).numpy()) for im in images)), rel=0.06)


def test_color_jitter_uses_torchvision_kernels():
    img = gradient()
    params = {"brightness": 1.3, "contrast": 0.7, "saturation": 1.2}
    expected = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(img, 1.3), 0.7), 1.2)
    assert torch.equal(A.ColorJitter().apply(img, params), expected)


def test_rgb_shift_clamps_and_rounds():
    img = torch.tensor([0, 100, 250], dtype=torch.uint8).view(3, 1, 1).expand(3, 2, 2).contiguous()
    out = AF.rgb_shift(img, [-5.0, 2.6, 10.0])
    assert out[:, 0, 0].tolist() == [0, 103, 255]


def test_to_uint8_truncates_like_the_plain_cast():
    x = torch.linspace(0, 255, 10_001)
    assert torch.equal(AF.to_uint8(x), x.to(torch.uint8))


# ---------------------------------------------------------------- batched


BATCH_OPS = [A.Flip(0.5, 0.5), A.ColorJitter(0.5, 0.5, 0.5, p=0.7), A.PCAColor(0.5, p=0.7),
             A.RGBShift(20, p=0.7), A.RGBShift(20, "uniform")]


@pytest.mark.parametrize("op", BATCH_OPS, ids=repr)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_batched_op_equals_per_image_op(op, dtype):
    batch = batch_of(8)
    batch = batch if dtype == torch.uint8 else batch.float() / 255
    g = gen(3)
    draws = [op.draw(g, (H, W)) for _ in range(len(batch))]
    out = op.apply(batch, A.stack_params(draws))  # the same kernel, given one row per sample
    ref = torch.stack([op.apply(batch[i], draws[i]) for i in range(len(batch))])
    assert out.dtype == dtype and out.shape == batch.shape
    if dtype == torch.uint8:
        assert torch.equal(out, ref)
    else:
        assert torch.allclose(out, ref, atol=1e-6, rtol=0)
    rows = {json.dumps(d) for d in draws}
    assert len(rows) > 1  # samples get their own draws


def test_batch_pipeline_equals_per_image_pipeline():
    bp = A.Pipeline([A.Flip(0.5, 0.5), A.ColorJitter(0.4, 0.4, 0.4), A.PCAColor(0.3), A.RGBShift(12, p=0.7)])
    batch = batch_of(8)
    g = gen(5)
    draws = [bp.draw(g, (H, W)) for _ in range(len(batch))]
    out = bp.apply_per_sample(batch, draws)
    for i in range(len(batch)):
        x = batch[i]
        for op, p in zip(bp.ops, draws[i]):
            x = op.apply(x, p)
        assert torch.equal(out[i], x)
        assert torch.equal(out[i], bp.apply(batch[i], draws[i]))
    assert not torch.equal(out[0], out[1])


def test_split_moves_flips_and_colour_to_the_batch():
    per_image, per_batch = A.build("heavy", size=32).split_batchable()
    assert [op.name for op in per_image] == ["crop", "rotate", "shear", "local_warp"]
    assert [op.name for op in per_batch.ops] == ["flip", "color_jitter", "pca_color", "rgb_shift"]
    with pytest.raises(ValueError, match="rotate"):
        A.Pipeline([A.Rotate()]).apply_per_sample(batch_of(2), [[{"angle": 5.0}]] * 2)


def test_probability_and_identity_live_in_the_base_classes():
    # No op writes its own coin flip or identity shortcut: they implement make_params/transform.
    for cls in A.OPS.values():
        assert "draw" not in vars(cls) and "apply" not in vars(cls), cls
        assert issubclass(cls, A.RandomOp) == ("p" in {f.name for f in dataclasses.fields(cls)}), cls
    # The coin comes first and a skipped op still draws its values: another p for one op leaves
    # the draws of the ops after it as they were.
    for seed in range(20):
        rare = A.Pipeline([A.Rotate(30, p=0.1), A.Shear(20, p=0.5)]).draw(gen(seed), (H, W))
        often = A.Pipeline([A.Rotate(30, p=0.9), A.Shear(20, p=0.5)]).draw(gen(seed), (H, W))
        assert rare[1] == often[1]
    img = gradient()
    for op in NEVER:  # a skipped draw hands back the image itself, untouched
        assert op.apply(img, op.draw(gen(0), (H, W))) is img


def test_draws_are_pinned():
    # Cached augmented views are keyed by seed, not by draw: a change here silently changes what
    # every cached view holds, so it must come with a new graft.augment.KERNELS.
    pipe = A.build("heavy", size=64)
    assert pipe.draw(gen(0), (300, 400)) == [
        {"top": 7, "left": 32, "height": 261, "width": 309}, {"horizontal": True, "vertical": False},
        {"angle": 0.0}, {"x": 0.0, "y": 0.0}, {"alpha": 3.0, "seed": 1025154433},
        {"brightness": 1.2103977349950505, "contrast": 0.8047197854133809, "saturation": 0.7516864620015218},
        {"alphas": [0.017528332277766262, -0.0931521099972562, -0.1505489670928174]},
        {"offsets": [-6.609825228054504, -11.235937622532997, -6.512634232534796]},
    ]
    assert pipe.draw(gen(1), (300, 400)) == [
        {"top": 38, "left": 50, "height": 138, "width": 118}, {"horizontal": True, "vertical": False},
        {"angle": -2.237105901249916}, {"x": -4.281230266203644, "y": 6.07186409160861},
        {"alpha": 0.0, "seed": 837695404},
        {"brightness": 1.1308246931545276, "contrast": 0.8041335742421472, "saturation": 0.931497539691307},
        {"alphas": [-0.004214706314638268, -0.08205757770783682, 0.03132995041068195]},
        {"offsets": [0.0, 0.0, 0.0]},
    ]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batched_on_gpu_matches_cpu_per_image():
    bp = A.Pipeline(BATCH_OPS[:4])
    batch = batch_of(16, 224, 224)
    g = gen(0)
    draws = [bp.draw(g, (224, 224)) for _ in range(len(batch))]
    out = bp.apply_per_sample(batch.cuda(), draws).cpu()
    ref = bp.apply_per_sample(batch, draws)
    assert (out.int() - ref.int()).abs().max() <= 1  # GPU float rounding may differ by one level


# ---------------------------------------------------------------- pipeline and config


def test_pipeline_draw_apply_and_describe():
    pipe = A.build("heavy", size=32)
    img = gradient()
    params = pipe.draw(gen(2), (H, W))
    assert plain(params)
    assert torch.equal(pipe(img, gen(2)), pipe.apply(img, params))
    assert pipe(img, gen(2)).shape == (3, 32, 32) and pipe.output_size((H, W)) == (32, 32)
    described = json.loads(json.dumps(pipe.describe()))
    assert list(described) == [op.name for op in pipe.ops]
    assert described["rotate"] == {"degrees": 20.0, "p": 0.5, "padding": "reflect"}
    with pytest.raises(ValueError, match="at most once"):
        A.Pipeline([A.Rotate(), A.Rotate()])


def test_config_round_trip_and_key():
    pipe = A.build("standard", size=64)
    config = pipe.config()
    again = A.AugConfig.from_json(config.to_json(indent=2))
    assert again == config and again.key() == config.key() and len(config.key()) == 16
    img = gradient()
    assert torch.equal(again.build()(img, gen(1)), pipe(img, gen(1)))
    short = A.AugConfig({"rotate": {"degrees": 15}})
    assert short.key() == A.AugConfig({"rotate": {"p": 0.5, "degrees": 15.0, "padding": "reflect"}}).key()
    assert short.key() != A.AugConfig({"rotate": {"degrees": 16}}).key()
    assert short.key() != A.AugConfig({"rotate": {"degrees": 15}, "flip": {}}).key()
    with pytest.raises(ValueError, match="valid ops"):
        A.AugConfig({"twirl": {}})
    with pytest.raises(ValueError, match="valid: degrees, p, padding"):
        A.AugConfig({"rotate": {"degree": 15}})
