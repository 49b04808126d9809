"""Deterministic augmentation kernels: explicit parameters in, image out, no randomness.

graft.augment's op classes draw parameters and call these. torchvision.transforms.v2.functional
does the work wherever it has the operation; what it lacks is written here and says so.
"""

from ._color import (
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    brightness_batch,
    color_twist,
    contrast_batch,
    pca_color,
    pca_offsets,
    rgb_shift,
    saturation_batch,
    to_uint8,
)
from ._geometry import (
    PADDINGS,
    affine,
    elastic,
    flip,
    flip_batch,
    hflip,
    resized_crop,
    rotate,
    shear,
    vflip,
    warp_field,
)

__all__ = [
    "PADDINGS",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "affine",
    "brightness_batch",
    "color_twist",
    "contrast_batch",
    "elastic",
    "flip",
    "flip_batch",
    "hflip",
    "pca_color",
    "pca_offsets",
    "resized_crop",
    "rgb_shift",
    "rotate",
    "saturation_batch",
    "shear",
    "to_uint8",
    "vflip",
    "warp_field",
]
