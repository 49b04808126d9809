"""Deterministic colour kernels: every parameter is explicit, nothing is drawn at random.

Brightness, contrast and saturation of one image are torchvision's own kernels. Hand-written here,
because torchvision lacks them: a per-channel RGB offset, the PCA colour shift of AlexNet, and
per-sample versions of brightness/contrast/saturation for a batch (torchvision applies one factor
to a whole batch). The per-sample versions repeat torchvision's arithmetic step by step, in the
same float32 operations, so their result equals the per-image kernel's bit for bit.

Images are tensors shaped (..., 3, H, W): uint8 in 0..255 or float in 0..1.
"""

import torch
from torchvision.transforms.v2 import functional as F

adjust_brightness = F.adjust_brightness
adjust_contrast = F.adjust_contrast
adjust_saturation = F.adjust_saturation


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
    return out.round_().clamp_(0, 255).to(torch.uint8)


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


def brightness_batch(batch: torch.Tensor, factors) -> torch.Tensor:
    """torchvision's adjust_brightness with one factor per sample of (N, 3, H, W)."""
    out = batch.mul(_per_sample(factors, batch)).clamp_(0, _bound(batch))
    return out if batch.is_floating_point() else out.to(batch.dtype)


def contrast_batch(batch: torch.Tensor, factors) -> torch.Tensor:
    """torchvision's adjust_contrast with one factor per sample: blend with the image's mean grey."""
    mean = _grayscale(batch).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(batch, mean, factors)


def saturation_batch(batch: torch.Tensor, factors) -> torch.Tensor:
    """torchvision's adjust_saturation with one factor per sample: blend with the grey image."""
    return _blend(batch, _grayscale(batch), factors)


def _bound(img: torch.Tensor) -> float:
    return 1.0 if img.is_floating_point() else 255.0


def _per_sample(values, batch: torch.Tensor, dtype=None) -> torch.Tensor:
    dtype = dtype or (batch.dtype if batch.is_floating_point() else torch.float32)
    return torch.as_tensor(values, dtype=torch.float64).to(dtype).to(batch.device).view(-1, 1, 1, 1)


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
    return out if img.is_floating_point() else out.to(img.dtype)
