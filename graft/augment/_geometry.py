"""Geometric augmentation ops: random flips, resized crops, rotation, shear and local warping.

Each op draws its parameters from a torch.Generator and an image size only, then calls a kernel of
graft.augment.functional (see graft.augment._op for the contract).
"""

import math
from dataclasses import dataclass

import torch

from graft.augment import functional as AF
from graft.augment.functional._geometry import check_padding
from graft.augment._op import Op, RandomOp, check_pair, check_range, uniform


@dataclass
class Flip(Op):
    """Mirror left-right with probability `horizontal_p` and top-bottom with `vertical_p`.

    params: {"horizontal": bool, "vertical": bool}. Batchable (one draw per sample).
    """

    horizontal_p: float = 0.5
    vertical_p: float = 0.0
    name = "flip"
    unchanged = {"horizontal": False, "vertical": False}
    batchable = True
    fuses = "inner"

    def __post_init__(self):
        self.horizontal_p = check_range("horizontal_p", self.horizontal_p, 0, 1)
        self.vertical_p = check_range("vertical_p", self.vertical_p, 0, 1)

    @property
    def is_identity(self) -> bool:
        return self.horizontal_p == 0 and self.vertical_p == 0

    def make_params(self, generator, size=None) -> dict:
        u_h, u_v = uniform(generator, 2).tolist()
        return {"horizontal": u_h < self.horizontal_p, "vertical": u_v < self.vertical_p}

    def transform(self, img, params):
        return AF.flip(img, params["horizontal"], params["vertical"])

    def source_map(self, params, size):
        return AF.PointMap(AF.flip_matrix(size, params["horizontal"], params["vertical"]))


@dataclass
class RandomResizedCrop(Op):
    """Crop a random box, then resize it to `size` x `size` (bicubic, antialiased).

    size: output side (int) or (height, width).
    scale: range of the box's area as a fraction of the image's area, 0 < low <= high <= 1.
        (1, 1) always takes the whole image (resized, so squashed if its aspect differs).
    ratio: range of the box's aspect ratio width/height, drawn log-uniformly.

    Drawing follows torchvision's RandomResizedCrop: up to 10 tries of (area, ratio) until the box
    fits, else the central box at the nearest allowed ratio. All 10 tries' numbers are always
    drawn. params: {"top", "left", "height", "width"}, the box in pixels of an image of the size
    given to draw; see `scale_params` to use it on the same image decoded at another size.
    """

    size: int | tuple[int, int] = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    name = "crop"
    fuses = "first"
    interpolates = True

    def __post_init__(self):
        if isinstance(self.size, int):
            sizes = (self.size,)
        else:
            self.size = tuple(int(s) for s in self.size)
            sizes = self.size
        if len(sizes) not in (1, 2) or min(sizes) < 1:
            raise ValueError(f"size must be a positive int or (height, width), got {self.size!r}")
        self.scale = check_pair("scale", self.scale, 0, 1)
        self.ratio = check_pair("ratio", self.ratio, 0, math.inf)

    def output_size(self, size):
        return (self.size, self.size) if isinstance(self.size, int) else self.size

    def make_params(self, generator, size) -> dict:
        h, w = int(size[0]), int(size[1])
        tries = uniform(generator, 10, 4).tolist()
        if self.scale[0] >= 1:
            return {"top": 0, "left": 0, "height": h, "width": w}
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for u_area, u_ratio, u_top, u_left in tries:
            area = h * w * (self.scale[0] + (self.scale[1] - self.scale[0]) * u_area)
            aspect = math.exp(log_lo + (log_hi - log_lo) * u_ratio)
            cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                return {"top": int(u_top * (h - ch + 1)), "left": int(u_left * (w - cw + 1)), "height": ch, "width": cw}
        if w / h < self.ratio[0]:
            cw, ch = w, min(h, max(1, round(w / self.ratio[0])))
        elif w / h > self.ratio[1]:
            cw, ch = min(w, max(1, round(h * self.ratio[1]))), h
        else:
            cw, ch = w, h
        return {"top": (h - ch) // 2, "left": (w - cw) // 2, "height": ch, "width": cw}

    def transform(self, img, params):
        return AF.resized_crop(img, params["top"], params["left"], params["height"], params["width"], self.size)

    def source_map(self, params, size):
        return AF.PointMap(AF.box_matrix(size, params["top"], params["left"], params["height"], params["width"]))

    @staticmethod
    def scale_params(params: dict, from_size, to_size) -> dict:
        """The box `params` drawn for an image of `from_size` (H, W), moved onto the same image
        decoded at `to_size` (e.g. a JPEG decoded at reduced scale): edges scaled and rounded."""
        fy, fx = to_size[0] / from_size[0], to_size[1] / from_size[1]
        top, left = round(params["top"] * fy), round(params["left"] * fx)
        bottom = round((params["top"] + params["height"]) * fy)
        right = round((params["left"] + params["width"]) * fx)
        top, left = min(top, to_size[0] - 1), min(left, to_size[1] - 1)
        return {
            "top": top,
            "left": left,
            "height": max(1, min(bottom, to_size[0]) - top),
            "width": max(1, min(right, to_size[1]) - left),
        }


@dataclass
class _CentredAffine(RandomOp):
    """Rotation or shear about the image centre with probability `p`: torchvision's affine,
    bilinear, same size. padding="reflect" (default) mirrors the image into the corners the
    transform uncovers; "zeros" leaves them black."""

    degrees: float = 15.0
    p: float = 0.5
    padding: str = "reflect"
    max_degrees = 180.0
    interpolates = True

    def __post_init__(self):
        super().__post_init__()
        self.degrees = check_range("degrees", self.degrees, 0, self.max_degrees)
        check_padding(self.padding)

    @property
    def zero_strength(self) -> bool:
        return self.degrees == 0

    def affine_args(self, params) -> tuple[float, tuple[float, float]]:
        """(clockwise angle, (shear x, shear y)) in degrees, as functional.affine takes them."""
        raise NotImplementedError

    def transform(self, img, params):
        return AF.affine(img, *self.affine_args(params), padding=self.padding)

    @property
    def fuses(self):
        return "inner" if self.padding == "reflect" else None  # zero fill is no map of points

    def source_map(self, params, size):
        return AF.PointMap(AF.affine_matrix(size, *self.affine_args(params)), reflect=size)


@dataclass
class Rotate(_CentredAffine):
    """With probability `p`, rotate by an angle drawn uniformly in [-degrees, degrees].

    Bilinear, same size; padding as in _CentredAffine. params: {"angle": degrees, counter-clockwise}.
    """

    name = "rotate"
    unchanged = {"angle": 0.0}

    def make_params(self, generator, size=None) -> dict:
        return {"angle": (2 * uniform(generator, 1).item() - 1) * self.degrees + 0.0}

    def affine_args(self, params):
        return -params["angle"], (0.0, 0.0)  # functional.rotate's convention: affine turns clockwise


@dataclass
class Shear(_CentredAffine):
    """With probability `p`, shear along x and along y by angles each drawn uniformly in
    [-degrees, degrees] (torchvision's affine shear). Bilinear, same size; padding as in Rotate.
    params: {"x": degrees, "y": degrees}.
    """

    degrees: float = 10.0
    name = "shear"
    unchanged = {"x": 0.0, "y": 0.0}
    max_degrees = 60.0

    def make_params(self, generator, size=None) -> dict:
        ux, uy = uniform(generator, 2).tolist()
        return {"x": (2 * ux - 1) * self.degrees + 0.0, "y": (2 * uy - 1) * self.degrees + 0.0}

    def affine_args(self, params):
        return 0.0, (params["x"], params["y"])


@dataclass
class LocalWarp(RandomOp):
    """With probability `p`, warp the image locally with a smooth random displacement field
    (elastic deformation, via torchvision's elastic).

    alpha: strength, the root-mean-square displacement in pixels of the image being warped.
    sigma: smoothness, the Gaussian standard deviation in pixels over which displacements are
        correlated; small sigma wobbles, large sigma bends.
    padding: "reflect" (default) or "zeros", for pixels moved in from outside the image.
    params: {"alpha": alpha or 0.0 when skipped, "seed": int}; the field is rebuilt from the seed
    by graft.augment.functional.warp_field, so params stay small.
    """

    alpha: float = 4.0
    sigma: float = 8.0
    p: float = 0.25
    padding: str = "reflect"
    name = "local_warp"
    unchanged = {"alpha": 0.0}
    interpolates = True

    def __post_init__(self):
        super().__post_init__()
        self.alpha = check_range("alpha", self.alpha, 0, math.inf)
        self.sigma = check_range("sigma", self.sigma, 0, math.inf)
        check_padding(self.padding)

    @property
    def zero_strength(self) -> bool:
        return self.alpha == 0

    def make_params(self, generator, size=None) -> dict:
        return {"alpha": self.alpha, "seed": int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())}

    def transform(self, img, params):
        return AF.elastic(img, params["alpha"], self.sigma, params["seed"], self.padding)

    @property
    def fuses(self):
        return "last" if self.padding == "reflect" else None

    def source_map(self, params, size):
        return AF.PointMap(field=AF.warp_planes(size, params["alpha"], self.sigma, params["seed"]), reflect=size)
