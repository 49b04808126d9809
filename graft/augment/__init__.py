"""Data augmentation for graft's training: random ops with a reproducible draw/apply split.

Every op draws a few plain numbers from a torch.Generator and an image size (`draw`), then applies
them with a deterministic kernel from graft.augment.functional (`apply`). Pipelines chain ops
(and run flips and colour ops with one draw per sample on a batch's device), presets name
sensible strengths, and `preview_grid` shows what a setting does.

    from graft.augment import build
    pipe = build("standard", "rotate=15,crop_scale=0.35-1", size=224)
    out = pipe(img_uint8_chw, torch.Generator().manual_seed(0))
"""

from . import functional
from ._color import IMAGENET_EIGVALS, IMAGENET_EIGVECS, ColorJitter, PCAColor, RGBShift, fit_pca
from ._geometry import Flip, LocalWarp, RandomResizedCrop, Rotate, Shear
from ._op import Op, RandomOp, stack_params
from ._pipeline import OPS, AugConfig, Pipeline
from .presets import (
    DEFAULT_PRESET,
    KNOBS,
    PRESETS,
    build,
    check_overrides,
    load_overrides,
    parse_overrides,
    preset_table,
)
from .preview import preview_grid

# Bumped whenever a kernel's output changes for the same params (2: the loader's fused colour
# run, rounding once; 3: its geometry resampled once); cached augmented views carry it in their key.
KERNELS = 3

__all__ = [
    "DEFAULT_PRESET",
    "IMAGENET_EIGVALS",
    "IMAGENET_EIGVECS",
    "KERNELS",
    "KNOBS",
    "OPS",
    "PRESETS",
    "AugConfig",
    "ColorJitter",
    "Flip",
    "LocalWarp",
    "Op",
    "PCAColor",
    "Pipeline",
    "RGBShift",
    "RandomOp",
    "RandomResizedCrop",
    "Rotate",
    "Shear",
    "build",
    "check_overrides",
    "fit_pca",
    "functional",
    "load_overrides",
    "parse_overrides",
    "preset_table",
    "preview_grid",
    "stack_params",
]
