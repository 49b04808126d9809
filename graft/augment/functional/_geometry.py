"""Deterministic geometric kernels: every parameter is explicit, nothing is drawn at random.

The op classes in graft.augment draw parameters and call these, so any augmented image can be
recomputed from its parameters. torchvision.transforms.v2.functional does the resampling
(resized_crop, affine, elastic). Hand-written here, because torchvision lacks them: reflect padding
around affine and elastic (torchvision can only fill uncovered pixels with a constant), the
displacement field of `elastic`, and a flip of some samples of a batch.

Images are tensors shaped (..., C, H, W): uint8 in 0..255 or float in 0..1. A leading batch
dimension gets the same parameters for every sample, except where `flip` is given one per sample.
"""

import functools
import math

import torch
from graft.augment.functional._tv import F, InterpolationMode

PADDINGS = ("reflect", "zeros")


def flip(img: torch.Tensor, horizontal, vertical) -> torch.Tensor:
    """Mirror left-right where `horizontal` and top-bottom where `vertical` is True: each a bool
    for the image (or a whole batch), or an (N,) bool mask, one per sample of an (N, C, H, W)
    batch (hand-written: torchvision flips a whole batch or none of it). With nothing to mirror,
    `img` itself is returned."""
    for mask, dim in ((horizontal, -1), (vertical, -2)):
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.all():
            img = img.flip(dim)
        elif mask.any():
            img = torch.where(mask.to(img.device).view(-1, 1, 1, 1), img.flip(dim), img)
    return img


def resized_crop(img: torch.Tensor, top: int, left: int, height: int, width: int, size) -> torch.Tensor:
    """Crop the box (top, left, height, width), then resize it to `size` (an int for a square, or
    (h, w)) with bicubic interpolation and antialiasing (torchvision); float results are clamped
    to 0..1. A box covering the whole image resized to the image's own size leaves it unchanged."""
    size = [size, size] if isinstance(size, int) else list(size)
    out = F.resized_crop(
        img, top, left, height, width, size, interpolation=InterpolationMode.BICUBIC, antialias=True
    )
    return out.clamp(0, 1) if out.is_floating_point() else out  # bicubic overshoots; uint8 is clamped already


def rotate(img: torch.Tensor, angle: float, padding: str = "reflect") -> torch.Tensor:
    """Rotate counter-clockwise by `angle` degrees about the centre, keeping the size (bilinear).

    padding="reflect" fills the corners the rotated image no longer covers with the image mirrored
    at its borders; padding="zeros" leaves them black, exactly as torchvision's rotate with
    bilinear interpolation. angle 0 returns `img` itself.
    """
    return affine(img, angle=-angle, shear=(0.0, 0.0), padding=padding)  # affine turns clockwise


def shear(img: torch.Tensor, x: float, y: float, padding: str = "reflect") -> torch.Tensor:
    """Shear by `x` degrees along the horizontal axis and `y` degrees along the vertical axis about
    the centre (torchvision's affine convention, bilinear); padding as in `rotate`."""
    return affine(img, angle=0.0, shear=(x, y), padding=padding)


def affine(img: torch.Tensor, angle: float = 0.0, shear=(0.0, 0.0), padding: str = "reflect") -> torch.Tensor:
    """Rotation by `angle` degrees clockwise combined with shear (x, y) degrees, about the
    centre: torchvision's `affine`, bilinear, no translation or scaling. (torchvision's affine
    turns clockwise, its rotate counter-clockwise.)

    For padding="reflect" the image is first reflect-padded by enough to cover every source point
    the transform reads, transformed, then cropped back to its own size.
    """
    check_padding(padding)
    sx, sy = float(shear[0]), float(shear[1])
    if angle == 0 and sx == 0 and sy == 0:
        return img
    margin_h, margin_w = _affine_margin(img.shape[-2:], sx, sy) if padding == "reflect" else (0, 0)
    out = F.affine(
        _reflect_pad(img, margin_h, margin_w),
        angle=float(angle),
        translate=[0.0, 0.0],
        scale=1.0,
        shear=[sx, sy],
        interpolation=InterpolationMode.BILINEAR,
        fill=None,  # zeros
    )
    return _crop_margin(out, margin_h, margin_w)


def warp_field(size, alpha: float, sigma: float, seed: int) -> torch.Tensor:
    """The displacement field of `elastic`: (H, W, 2) float32 offsets (dx, dy) in pixels."""
    return warp_planes(size, alpha, sigma, seed).permute(1, 2, 0).contiguous()


def warp_planes(size, alpha: float, sigma: float, seed: int) -> torch.Tensor:
    """`warp_field` as two (H, W) planes, (2, H, W): dx, then dy.

    Uniform noise in [-1, 1] from a CPU generator seeded with `seed` is smoothed by a Gaussian of
    standard deviation `sigma` pixels, then scaled so the root-mean-square displacement over the
    field is exactly `alpha` pixels. For speed the noise lives on a grid of one point per
    sigma/2 pixels, is blurred there (kernel +-4 sigma, at most the grid's size, reflect padding,
    as torchvision's gaussian_blur) and resized bicubically to (H, W) (as torch's interpolate,
    align_corners=False): a field that smooth has no detail finer than that grid. Blur and resize
    are linear along each axis, so both are one precomputed matrix per axis and the field is two
    small matrix products (a fifth of the cost of running them as image operations).
    Hand-written: torchvision builds its field from the global random state inside ElasticTransform.
    """
    h, w = int(size[0]), int(size[1])
    step = max(1, int(sigma / 2))
    gh, gw = math.ceil(h / step), math.ceil(w / step)
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.rand(2, 1, gh, gw, generator=gen) * 2 - 1
    s = sigma / step
    k = min(int(8 * s + 1) | 1, 2 * min(gh, gw) - 1) if sigma > 0 else 1  # odd; the blur reflects
    rows, cols = _smooth_resize(gh, h, s, k), _smooth_resize(gw, w, s, k)
    field = rows @ noise.squeeze(1) @ cols.T
    return field.mul_(alpha * math.sqrt(field.numel()) / torch.linalg.vector_norm(field))


@functools.lru_cache(maxsize=64)
def _smooth_resize(n: int, out: int, s: float, k: int) -> torch.Tensor:
    """(out, n) float32: a k-tap Gaussian blur of standard deviation s on an n-point axis (k odd,
    k < 2n), then a bicubic resize to `out` points, as one matrix."""
    blur = torch.eye(n, dtype=torch.float64)
    if k > 1:
        r = k // 2
        x = torch.linspace(-r / math.sqrt(2), r / math.sqrt(2), k, dtype=torch.float64)
        taps = torch.softmax(-(x / s) ** 2, dim=0)  # torchvision's _get_gaussian_kernel1d
        blur = torch.zeros(n, n, dtype=torch.float64)
        for i in range(n):
            for t in range(k):
                j = abs(i + t - r)  # reflect about the first sample ...
                j = j if j < n else 2 * (n - 1) - j  # ... and about the last
                blur[i, j] += taps[t]
    if out == n:
        return blur.to(torch.float32)
    resize = torch.zeros(out, n, dtype=torch.float64)
    for o in range(out):
        src = (o + 0.5) * n / out - 0.5  # align_corners=False; not clamped (as torch's bicubic)
        base = math.floor(src)
        for m, weight in enumerate(_cubic_weights(src - base)):
            resize[o, min(max(base - 1 + m, 0), n - 1)] += weight  # edge samples repeat
    return (resize @ blur).to(torch.float32)


def _cubic_weights(t: float, a: float = -0.75) -> tuple[float, float, float, float]:
    """Keys' cubic convolution weights of the samples at -1, 0, 1, 2 for a point t in [0, 1)
    (A = -0.75, as torch's bicubic)."""
    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return far(t + 1), near(t), near(1 - t), far(2 - t)


def elastic(img: torch.Tensor, alpha: float, sigma: float, seed: int, padding: str = "reflect") -> torch.Tensor:
    """Local warping: move every pixel by the smooth random field `warp_field((H, W), alpha,
    sigma, seed)` through torchvision's `elastic` (bilinear). Pixels moved in from outside the
    image are mirrored (padding="reflect") or black ("zeros"). alpha 0 returns `img` itself."""
    check_padding(padding)
    if alpha == 0:
        return img
    h, w = img.shape[-2:]
    field = warp_field((h, w), alpha, sigma, seed)
    m = math.ceil(field.abs().max().item()) + 2 if padding == "reflect" else 0
    # Field over the padded image; the margin is cropped away, so its displacement is irrelevant.
    displacement = torch.zeros(1, h + 2 * m, w + 2 * m, 2)
    displacement[0, m : m + h, m : m + w] = field * torch.tensor([2 / (w + 2 * m), 2 / (h + 2 * m)])
    out = F.elastic(_reflect_pad(img, m, m), displacement, interpolation=InterpolationMode.BILINEAR)
    return _crop_margin(out, m, m)


def check_padding(padding: str) -> None:
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {', '.join(PADDINGS)}, got {padding!r}")


def _affine_margin(size, shear_x: float, shear_y: float) -> tuple[int, int]:
    """Pixels to pad (top/bottom, left/right) so that rotation by any angle plus this shear reads
    only padded pixels. Source points lie within the largest singular value of the linear map times
    the half-diagonal of the image from its centre (rotation does not change singular values, and
    the map's determinant is 1, so the map and its inverse have the same largest one)."""
    h, w = int(size[0]), int(size[1])
    tx, ty = math.tan(math.radians(shear_x)), math.tan(math.radians(shear_y))
    linear = torch.tensor([[1.0, 0.0], [ty, 1.0]], dtype=torch.float64) @ torch.tensor(
        [[1.0, tx], [0.0, 1.0]], dtype=torch.float64
    )
    reach = torch.linalg.matrix_norm(linear, ord=2).item() * math.hypot(h, w) / 2
    return max(0, math.ceil(reach - h / 2) + 2), max(0, math.ceil(reach - w / 2) + 2)


def _reflect_pad(img: torch.Tensor, pad_h: int, pad_w: int) -> torch.Tensor:
    """Mirror-pad each side; padding larger than the image is done in several rounds."""
    while pad_h > 0 or pad_w > 0:
        h, w = img.shape[-2:]
        if min(h, w) < 2:  # nothing to mirror: repeat the edge
            return F.pad(img, [pad_w, pad_h, pad_w, pad_h], padding_mode="edge")
        dh, dw = min(pad_h, h - 1), min(pad_w, w - 1)
        img = F.pad(img, [dw, dh, dw, dh], padding_mode="reflect")
        pad_h, pad_w = pad_h - dh, pad_w - dw
    return img


def _crop_margin(img: torch.Tensor, margin_h: int, margin_w: int) -> torch.Tensor:
    if margin_h == 0 and margin_w == 0:
        return img
    h, w = img.shape[-2:]
    return img[..., margin_h : h - margin_h, margin_w : w - margin_w].contiguous()
