"""Deterministic augmentation kernels: explicit parameters in, image out, no randomness.

graft.augment's op classes draw parameters and call these. torchvision.transforms.v2.functional
does the work wherever it has the operation; what it lacks is written here and says so. Kernels of
the batchable ops (flip, colour) take one image's parameters or one per sample of a batch.
"""

from ._color import (
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    color_twist,
    pca_color,
    pca_offsets,
    rgb_shift,
    to_uint8,
)
from ._geometry import (
    PADDINGS,
    affine,
    elastic,
    flip,
    resized_crop,
    rotate,
    shear,
    warp_field,
)

__all__ = [
    "PADDINGS",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "affine",
    "color_twist",
    "elastic",
    "flip",
    "pca_color",
    "pca_offsets",
    "resized_crop",
    "rgb_shift",
    "rotate",
    "shear",
    "to_uint8",
    "warp_field",
]
