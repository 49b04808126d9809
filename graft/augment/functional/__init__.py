"""Deterministic augmentation kernels: explicit parameters in, image out, no randomness.

graft.augment's op classes draw parameters and call these. torchvision.transforms.v2.functional
does the work wherever it has the operation; what it lacks is written here and says so. Kernels of
the batchable ops (flip, colour) take one image's parameters or one per sample of a batch. The
geometric kernels are also stated as maps of points (`*_matrix`, `warp_planes`), which `resample`
chains into one read of the source (the loader's path).
"""

from graft.augment.functional._color import adjust_brightness, adjust_contrast, adjust_saturation, color_twist, pca_color, pca_offsets, rgb_shift, to_uint8
from graft.augment.functional._geometry import PADDINGS, affine, elastic, flip, resized_crop, rotate, shear, warp_field, warp_planes
from graft.augment.functional._resample import PointMap, affine_matrix, box_matrix, flip_matrix, resample

__all__ = [
    "PADDINGS",
    "PointMap",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "affine",
    "affine_matrix",
    "box_matrix",
    "color_twist",
    "elastic",
    "flip",
    "flip_matrix",
    "pca_color",
    "pca_offsets",
    "resample",
    "resized_crop",
    "rgb_shift",
    "rotate",
    "shear",
    "to_uint8",
    "warp_field",
    "warp_planes",
]
