"""Data augmentation for graft's training: random ops with a reproducible draw/apply split.

Every op draws a few plain numbers from a torch.Generator and an image size (`draw`), then applies
them with a deterministic kernel from graft.augment.functional (`apply`). Pipelines chain ops
(and run flips and colour ops with one draw per sample on a batch's device), presets name
sensible strengths, and `preview_grid` shows what a setting does.

    from graft.augment import build
    pipe = build("standard", "rotate=15,crop_scale=0.35-1", size=224)
    out = pipe(img_uint8_chw, torch.Generator().manual_seed(0))
"""

from graft._util.lazy import lazy_attributes

# Bumped whenever a kernel's output changes for the same params (2: the loader's fused colour
# run, rounding once; 3: its geometry resampled once); cached augmented views carry it in their key.
KERNELS = 3

# Each public name loads its module on first use (the ops are torch code; `graft augment list`
# reads only the presets): name -> module.
_LAZY = {
    **dict.fromkeys(["IMAGENET_EIGVALS", "IMAGENET_EIGVECS", "ColorJitter", "PCAColor", "RGBShift", "fit_pca"], "._color"),
    **dict.fromkeys(["Flip", "LocalWarp", "RandomResizedCrop", "Rotate", "Shear"], "._geometry"),
    **dict.fromkeys(["Op", "RandomOp", "stack_params"], "._op"),
    **dict.fromkeys(["OPS", "AugConfig", "Pipeline"], "._pipeline"),
    **dict.fromkeys(["DEFAULT_PRESET", "KNOBS", "PRESETS", "build", "check_overrides", "load_overrides",
                     "parse_overrides", "preset_table"], ".presets"),
    "preview_grid": ".preview",
}


__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY, {"functional": ".functional"})


__all__ = ["KERNELS", "functional", *_LAZY]
