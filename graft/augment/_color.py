"""Colour augmentation ops: brightness/contrast/saturation jitter, per-channel RGB shift and
AlexNet's PCA colour shift, plus `fit_pca` to measure a training set's colour principal axes.

Each op draws its parameters from a torch.Generator, then calls a kernel of
graft.augment.functional (see graft.augment._op). `color_steps(params)` states the same change as
steps of functional.color_twist, which the loader uses to run a chain of colour ops in one go.
All three are batchable: their kernels also take per-sample params, so a batch's samples each
get their own draw (Pipeline.apply_per_sample).
"""

import math
from dataclasses import dataclass

import torch

from graft.augment import functional as AF
from graft.augment._op import RandomOp, check_range, uniform

# ImageNet's RGB principal axes as used by fb.resnet.torch and many ports (Lighting transform):
# eigvecs[i] is the i-th eigenvector. How these eigenvalues were computed is not documented
# upstream; fit_pca on your own training images gives values in PCAColor's exact convention.
IMAGENET_EIGVALS = [0.2175, 0.0188, 0.0045]
IMAGENET_EIGVECS = [
    [-0.5675, -0.5808, -0.5836],
    [0.7192, -0.0045, -0.6948],
    [0.4009, -0.8140, 0.4203],
]

DISTRIBUTIONS = ("normal", "uniform")
JITTERS = {"brightness": AF.adjust_brightness, "contrast": AF.adjust_contrast, "saturation": AF.adjust_saturation}


@dataclass
class ColorJitter(RandomOp):
    """With probability `p`, scale brightness, contrast and saturation by factors drawn
    uniformly in [max(0, 1 - spread), 1 + spread], spread being `brightness`, `contrast`,
    `saturation` (0 turns that one off). Applied in that fixed order, as torchvision's kernels.
    params: {"brightness": factor, "contrast": factor, "saturation": factor} (1.0 = unchanged).
    """

    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    p: float = 1.0
    name = "color_jitter"
    unchanged = {"brightness": 1.0, "contrast": 1.0, "saturation": 1.0}
    batchable = True

    def __post_init__(self):
        super().__post_init__()
        for key in JITTERS:
            setattr(self, key, check_range(key, getattr(self, key), 0, math.inf))

    @property
    def zero_strength(self) -> bool:
        return self.brightness == self.contrast == self.saturation == 0

    def make_params(self, generator, size=None) -> dict:
        params = {}
        for key, u in zip(JITTERS, uniform(generator, 3).tolist()):
            spread = getattr(self, key)
            lo, hi = max(0.0, 1 - spread), 1 + spread
            params[key] = lo + (hi - lo) * u
        return params

    def transform(self, img, params):
        for key, kernel in JITTERS.items():
            if torch.as_tensor(params[key]).ne(1).any():
                img = kernel(img, params[key])
        return img

    def color_steps(self, params) -> list:
        """These params as steps of functional.color_twist (the loader's fused colour path)."""
        return [(key, params[key]) for key in JITTERS]


@dataclass
class RGBShift(RandomOp):
    """With probability `p`, add an offset to each of R, G and B (0..255 pixel units), then clamp.

    std: standard deviation of each channel's offset. distribution: "normal", or "uniform" on
    [-sqrt(3) std, sqrt(3) std] (the same standard deviation). params: {"offsets": [r, g, b]}.
    """

    std: float = 8.0
    distribution: str = "normal"
    p: float = 0.5
    name = "rgb_shift"
    unchanged = {"offsets": [0.0, 0.0, 0.0]}
    batchable = True

    def __post_init__(self):
        super().__post_init__()
        self.std = check_range("std", self.std, 0, 255)
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}, got {self.distribution!r}")

    @property
    def zero_strength(self) -> bool:
        return self.std == 0

    def make_params(self, generator, size=None) -> dict:
        if self.distribution == "normal":
            z = torch.randn(3, generator=generator, dtype=torch.float64)
        else:
            z = (uniform(generator, 3) * 2 - 1) * math.sqrt(3)
        return {"offsets": (z * self.std).tolist()}

    def transform(self, img, params):
        return AF.rgb_shift(img, params["offsets"])

    def color_steps(self, params) -> list:
        return [("offset", params["offsets"])]


@dataclass
class PCAColor(RandomOp):
    """AlexNet's PCA colour augmentation (Krizhevsky et al., 2012, section 4.1).

    With probability `p`, every pixel, as RGB in 0..1, gets `sum_i alpha_i * eigvals[i] *
    eigvecs[i]` added, alpha_i ~ N(0, sigma) drawn once per image; uint8 images get 255 times
    that, rounded and clamped. eigvals/eigvecs are the eigenvalues and eigenvectors (eigvecs[i],
    one row each) of the 3x3 covariance of RGB pixels scaled to 0..1, as `fit_pca` returns them;
    None takes ImageNet's (IMAGENET_EIGVALS/IMAGENET_EIGVECS). params: {"alphas": [a1, a2, a3]}.
    """

    sigma: float = 0.1
    eigvals: list[float] | None = None
    eigvecs: list[list[float]] | None = None
    p: float = 1.0
    name = "pca_color"
    unchanged = {"alphas": [0.0, 0.0, 0.0]}
    batchable = True

    def __post_init__(self):
        super().__post_init__()
        self.sigma = check_range("sigma", self.sigma, 0, math.inf)
        if (self.eigvals is None) != (self.eigvecs is None):
            raise ValueError("give both eigvals and eigvecs, or neither (for ImageNet's)")
        vals = IMAGENET_EIGVALS if self.eigvals is None else self.eigvals
        vecs = IMAGENET_EIGVECS if self.eigvecs is None else self.eigvecs
        vals_t, vecs_t = torch.as_tensor(vals, dtype=torch.float64), torch.as_tensor(vecs, dtype=torch.float64)
        if vals_t.shape != (3,) or vecs_t.shape != (3, 3):
            raise ValueError(
                "eigvals must be 3 numbers and eigvecs 3 rows of 3, "
                f"got shapes {tuple(vals_t.shape)} and {tuple(vecs_t.shape)}"
            )
        self.eigvals, self.eigvecs = vals_t.tolist(), vecs_t.tolist()

    @property
    def zero_strength(self) -> bool:
        return self.sigma == 0

    def make_params(self, generator, size=None) -> dict:
        return {"alphas": (torch.randn(3, generator=generator, dtype=torch.float64) * self.sigma).tolist()}

    def transform(self, img, params):
        return AF.pca_color(img, params["alphas"], self.eigvals, self.eigvecs)

    def color_steps(self, params) -> list:
        return [("offset", (255 * AF.pca_offsets(params["alphas"], self.eigvals, self.eigvecs)).tolist())]


def fit_pca(images_or_pixels, pixels_per_image: int = 4096, seed: int = 0) -> tuple[list[float], list[list[float]]]:
    """Principal axes of the RGB colours of a set of training images, for PCAColor.

    images_or_pixels: an iterable of uint8 (3, H, W) tensors or PIL images, an (N, 3, H, W) tensor, or an
        (M, 3) tensor of pixels (uint8, or float already in 0..1).
    From each image `pixels_per_image` pixels are sampled at random (with replacement; `seed`
    fixes which), scaled to 0..1; an (M, 3) pixel tensor is used whole. Returns (eigvals,
    eigvecs) of their 3x3 covariance as plain lists (JSON-able): eigenvalues in decreasing order,
    eigvecs[i] the unit eigenvector of eigvals[i], signed so its largest component is positive.
    """
    gen = torch.Generator().manual_seed(seed)
    images = images_or_pixels
    if isinstance(images, torch.Tensor) and images.ndim == 2:
        samples = [_unit(images)]
    else:
        if isinstance(images, torch.Tensor) and images.ndim == 3:
            images = [images]
        samples = []
        for img in images:
            if not isinstance(img, torch.Tensor):  # PIL image
                from torchvision.transforms.v2.functional import pil_to_tensor

                img = pil_to_tensor(img.convert("RGB"))
            pixels = img.reshape(3, -1).T
            if pixels.shape[0] > pixels_per_image:
                pixels = pixels[torch.randint(0, pixels.shape[0], (pixels_per_image,), generator=gen)]
            samples.append(_unit(pixels))
    if not samples or sum(len(s) for s in samples) < 2:
        raise ValueError("fit_pca needs at least two pixels")
    x = torch.cat(samples)
    if x.shape[1] != 3:
        raise ValueError(f"fit_pca expects RGB pixels, got {x.shape[1]} channels")
    vals, vecs = torch.linalg.eigh(torch.cov(x.T))
    vals, vecs = vals.flip(0).clamp(min=0), vecs.flip(1).T  # decreasing; rows are eigenvectors
    signs = torch.sign(vecs.gather(1, vecs.abs().argmax(1, keepdim=True)))
    return vals.tolist(), (vecs * signs).tolist()


def _unit(pixels: torch.Tensor) -> torch.Tensor:
    """float64 pixels in 0..1 (uint8 divided by 255)."""
    return pixels.to(torch.float64) if pixels.is_floating_point() else pixels.to(torch.float64) / 255
