"""Deterministic colour kernels: every parameter is explicit, nothing is drawn at random.

One kernel per operation, for one image or a whole batch: each parameter is either one value for
the image (or for every sample of a batch), or one value per sample of an (N, 3, H, W) batch
(a leading sample dimension). torchvision applies one factor to a whole batch, so brightness,
contrast and saturation are hand-written here: they repeat torchvision's arithmetic step by step,
in the same float32 operations, so one image's result equals torchvision's adjust_* bit for bit
on uint8 images, and a batch's equals each sample's on its own. Also hand-written, because
torchvision lacks them: a per-channel RGB offset and the PCA colour shift of AlexNet.

Also hand-written: `color_twist`, a whole run of those adjustments on one uint8 image in a few
float passes instead of two dozen (the loader's worker-side path, where colour was half of each
sample's cost), and `to_uint8`, a faster float-to-uint8 cast.

Images are tensors shaped (..., 3, H, W): uint8 in 0..255 or float in 0..1.
"""

import math

import torch


def adjust_brightness(img: torch.Tensor, factor) -> torch.Tensor:
    """torchvision's adjust_brightness: scale every pixel by `factor` (a number, or one per sample)."""
    out = img.mul(_per_sample(factor, img)).clamp_(0, _bound(img))
    return out if img.is_floating_point() else to_uint8(out)


def adjust_contrast(img: torch.Tensor, factor) -> torch.Tensor:
    """torchvision's adjust_contrast: blend each image with its mean grey level."""
    mean = _grayscale(img).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(img, mean, factor)


def adjust_saturation(img: torch.Tensor, factor) -> torch.Tensor:
    """torchvision's adjust_saturation: blend each image with its grey image."""
    return _blend(img, _grayscale(img), factor)


def rgb_shift(img: torch.Tensor, offsets) -> torch.Tensor:
    """Add a constant to each of the R, G, B channels. Hand-written (not in torchvision).

    `offsets` are in 0..255 pixel units: three numbers (one shift for the image or the whole
    batch) or an (N, 3) tensor (one shift per sample of an (N, 3, H, W) batch). uint8 images are
    shifted in float32, rounded to the nearest integer and clamped to 0..255; float images (0..1)
    get offsets / 255 and are clamped to 0..1. All-zero offsets return `img` itself.
    """
    off = torch.as_tensor(offsets, dtype=torch.float64)
    if not off.any():
        return img
    off = off.view(-1, 3, 1, 1) if off.ndim == 2 else off.view(3, 1, 1)
    if img.is_floating_point():
        return (img + (off / 255).to(img.dtype).to(img.device)).clamp_(0, 1)
    out = img.to(torch.float32) + off.to(torch.float32).to(img.device)
    return to_uint8(out.round_().clamp_(0, 255))


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Cast a float tensor already holding whole numbers in 0..255 to uint8 (truncating, like
    `.to(torch.uint8)`). torch's direct float32 -> uint8 cast is not vectorised on the CPU (about
    90 us for a 224 x 224 image, against 20 us through int16, measured with torch 2.14)."""
    return x.to(torch.int16).to(torch.uint8)


GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def color_twist(img: torch.Tensor, steps) -> torch.Tensor:
    """Apply a run of colour steps to one uint8 (3, H, W) image in a few float passes.

    steps: ("brightness", f), ("contrast", f), ("saturation", f) as torchvision's adjust_* on a
    float image, and ("offset", (r, g, b)) adding 0..255 pixel units, as `rgb_shift`/`pca_color`.
    The result equals applying them one by one in float (each clamping to the valid range, as
    torchvision's kernels do), then rounding once to uint8, up to float rounding: at most one
    level on a few pixels.

    Hand-written because no library fuses these (DALI's ColorTwist does, on GPUs only). Every
    step is affine in colour, so the image is carried as `k * x + t` (x the stored pixels, k a
    scale, t a per-channel offset) and pixels are rewritten only where a step needs them: the
    grey image for saturation, and a clamp when a step can leave the valid range (a factor above
    1, an offset). The mean for contrast comes from x's channel means.
    """
    if img.ndim != 3 or img.shape[0] != 3 or img.dtype != torch.uint8:
        raise ValueError(f"color_twist takes one uint8 (3, H, W) image, got {img.dtype} {tuple(img.shape)}")
    # Contiguous planes (a resize may hand over channels-last strides, 4-8x slower per pass here).
    x = img.to(torch.float32, memory_format=torch.contiguous_format)
    k, t = 1.0, [0.0, 0.0, 0.0]
    means = None  # channel means of x, while x is unchanged
    dirty = False  # k * x + t may have left 0..255: clamp before the next step
    for kind, value in steps:
        value = _checked_step(kind, value)
        if value is None:  # the identity
            continue
        if dirty:
            x, k, t, means = _settle(x, k, t).clamp_(0, 255), 1.0, [0.0, 0.0, 0.0], None
        if kind == "offset":
            t = [a + b for a, b in zip(t, value)]
            dirty = True
            continue
        x, k, t, means = _apply_factor(kind, value, x, k, t, means)
        dirty = value > 1  # factors up to 1 blend towards values inside the range
    return to_uint8(_settle(x, k, t).round_().clamp_(0, 255))


def _checked_step(kind: str, value):
    """A colour step's value, checked (three finite offsets, or a finite factor >= 0 as
    torchvision allows), or None when the step changes nothing."""
    if kind == "offset":
        value = [float(v) for v in value]
        if len(value) != 3 or not all(math.isfinite(v) for v in value):
            raise ValueError(f"an offset is three finite numbers, got {value}")
        return value if any(value) else None
    if kind not in ("brightness", "contrast", "saturation"):
        raise ValueError(f"unknown colour step {kind!r}")
    if not (float(value) >= 0 and math.isfinite(float(value))):  # as torchvision: no negatives
        raise ValueError(f"{kind} factor must be a finite number >= 0, got {value}")
    return None if float(value) == 1.0 else float(value)


def _settle(x: torch.Tensor, k: float, t: list) -> torch.Tensor:
    """Rewrite the pixels as k * x + t (in place)."""
    if k != 1.0:
        x = x.mul_(k)
    if any(t):
        x = x.add_(torch.tensor(t, dtype=x.dtype, device=x.device).view(3, 1, 1))
    return x


def _apply_factor(kind: str, f: float, x: torch.Tensor, k: float, t: list, means):
    """One brightness, contrast or saturation factor applied to the image carried as k * x + t:
    -> (x, k, t, means). Only saturation needs the pixels (the grey image)."""
    if kind == "brightness":  # f * image
        return x, k * f, [f * a for a in t], means
    if kind == "contrast":  # blend with the mean grey level
        if means is None:
            means = x.mean(dim=(-2, -1)).tolist()
        m = sum(w * (k * mc + tc) for w, mc, tc in zip(GRAY, means, t))
        return x, k * f, [f * a + (1 - f) * m for a in t], means
    r, g, b = x.unbind(0)  # saturation: blend with the grey image
    grey = r.mul(GRAY[0]).add_(g, alpha=GRAY[1]).add_(b, alpha=GRAY[2])
    wt = sum(w * tc for w, tc in zip(GRAY, t))
    x = x.mul_(f * k).add_(grey.unsqueeze(0), alpha=(1 - f) * k)
    return x, 1.0, [f * a + (1 - f) * wt for a in t], None


def pca_offsets(alphas, eigvals, eigvecs) -> torch.Tensor:
    """AlexNet's colour shift `sum_i alphas[i] * eigvals[i] * eigvecs[i]`, in 0..1 RGB units.

    `eigvecs[i]` is the i-th eigenvector (a row of three RGB weights) and `eigvals[i]` its
    eigenvalue, as returned by graft.augment.fit_pca. `alphas` is three numbers or (N, 3); the
    result is float64 of shape (3,) or (N, 3).
    """
    a = torch.as_tensor(alphas, dtype=torch.float64)
    lam = torch.as_tensor(eigvals, dtype=torch.float64)
    vecs = torch.as_tensor(eigvecs, dtype=torch.float64)
    return ((a * lam).unsqueeze(-1) * vecs).sum(-2)


def pca_color(img: torch.Tensor, alphas, eigvals, eigvecs) -> torch.Tensor:
    """PCA colour augmentation (Krizhevsky et al., 2012). Hand-written (not in torchvision).

    Every pixel, taken as RGB in 0..1, gets `pca_offsets(alphas, eigvals, eigvecs)` added; for
    uint8 images that is 255 times the offset, rounded and clamped as in `rgb_shift`. `alphas`
    is three numbers, or (N, 3) for one draw per sample of a batch.
    """
    return rgb_shift(img, 255 * pca_offsets(alphas, eigvals, eigvecs))


def _bound(img: torch.Tensor) -> float:
    return 1.0 if img.is_floating_point() else 255.0


def _per_sample(values, img: torch.Tensor) -> torch.Tensor:
    """`values` in the compute dtype on img's device: a 0-d tensor for one value, else (N, 1, 1, 1)."""
    dtype = img.dtype if img.is_floating_point() else torch.float32
    t = torch.as_tensor(values, dtype=torch.float64).to(dtype).to(img.device)
    return t.view(-1, 1, 1, 1) if t.ndim else t


def _grayscale(img: torch.Tensor) -> torch.Tensor:
    # Same operations as torchvision's _rgb_to_grayscale_image (and its floor for integer images).
    r, g, b = img.unbind(dim=-3)
    gray = r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(dim=-3)
    return gray if img.is_floating_point() else gray.floor_()


def _blend(img: torch.Tensor, other: torch.Tensor, factors) -> torch.Tensor:
    # torchvision: img.mul(ratio).add_(other, alpha=1 - ratio), where both scalars are rounded to
    # the compute dtype and the add is a fused multiply-add; addcmul is the same fused operation.
    ratio = torch.as_tensor(factors, dtype=torch.float64)
    scaled = img.mul(_per_sample(ratio, img))
    out = torch.addcmul(scaled, other, _per_sample(1.0 - ratio, img)).clamp_(0, _bound(img))
    return out if img.is_floating_point() else to_uint8(out)
