"""The deterministic evaluation preprocessing of a backbone: resize, centre crop, normalise.

It is the standard recipe, step for step what torchvision.transforms.v2 does to a PIL image, so a
ten-line client reproduces graft's pixels exactly: decode the whole file (no reduced JPEG
decoding), apply the EXIF orientation, convert to RGB, resize the shorter side to `resize` with
Pillow's antialiased filter (long side `int(resize * long / short)`, as
`torchvision.transforms.v2.functional.resize` computes it), then centre-crop `size` (torchvision's
`center_crop`: offset `int(round((side - size) / 2))`, zero padding if the image is smaller).
Exported models record it (graft.use.export) and take the uint8 crop it produces.

It is part of the feature cache's key and of every saved run, so it is a small frozen dataclass
that round-trips through JSON; `to_json` also carries RECIPE, the version of the pixel recipe, so
features computed by an earlier recipe are never reused. Images travel as uint8 tensors until
`normalize`, which runs on the consumer's side (4x less to copy out of loader workers than float32).
torch is imported only by the functions that make tensors: `crop_array` is the whole recipe in
numpy, for clients that run an exported model without torch (graft.use.predictor).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from graft.data.images import read_image
from graft.errors import GraftError

if TYPE_CHECKING:  # annotations only: the functions that make tensors import torch themselves
    import torch

# Version of the pixels `crop` produces. 1: JPEG draft decoding and a long side rounded up;
# 2: the standard recipe above.
RECIPE = 2

# Above this many pixels the full resized image is not made (only shapes thinner than about
# 1:250 get there, e.g. 20000x60): the crop's region alone is resized (Pillow's `box`), which
# is not bit-equal to resizing everything (a level here and there) but needs no 60 MB canvas.
MAX_RESIZED_PIXELS = 1 << 24

CENTRE = (0.5, 0.5)  # `at` of the evaluation crop: half the margin on each side
# Test-time `crops` (--tta crops): the centre crop and the four corners of the resized image,
# torchvision's FiveCrop of the same square; the centre first (the novelty check reads it).
FIVE_CROPS = (CENTRE, (0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0))

_PIL_INTERPOLATION = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


class _Recipe:
    """What a crop recipe does given its `crop_array` and `normalize_constants` (Preprocessing,
    Tiled): read a file, make the uint8 tensor, standardise a batch."""

    def load(self, path) -> "torch.Tensor":
        """Read the whole file, resize, crop: the uint8 (3, H, W) tensor the network sees."""
        return self.crop(read_image(path))

    def crop(self, img: Image.Image, at: tuple[float, float] = CENTRE) -> "torch.Tensor":
        """An RGB image -> the uint8 (3, H, W) tensor the network sees (see the module doc)."""
        import torch

        return torch.from_numpy(self.crop_array(img, at)).permute(2, 0, 1).contiguous()

    def normalize(self, batch: "torch.Tensor") -> "torch.Tensor":
        """uint8 (N, 3, H, W) -> float32, scaled to [0, 1] then standardised."""
        mean, inv_std = (c.to(batch.device) for c in self.normalize_constants())
        return batch.float().sub_(mean).mul_(inv_std)  # in place: one float batch, not three


@dataclass(frozen=True)
class Preprocessing(_Recipe):
    size: int = 224  # the square the network sees
    resize: int = 256  # shorter side before the centre crop
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @classmethod
    def from_crop_pct(cls, size, crop_pct, interpolation, mean, std) -> "Preprocessing":
        return cls(int(size), int(math.floor(size / crop_pct)), str(interpolation),
                   tuple(float(m) for m in mean), tuple(float(s) for s in std))

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the uint8 crop the network takes."""
        return self.size, self.size

    def to_json(self) -> dict:
        return {**asdict(self), "recipe": RECIPE}

    @classmethod
    def from_json(cls, d: dict) -> "Preprocessing | Tiled":
        """The preprocessing `to_json` wrote: a Preprocessing, or a Tiled one (it has "tiles")."""
        if "tiles" in d:
            return Tiled(tuple(cls.from_json(t) for t in d["tiles"]))
        # "recipe" is not read back: this code computes only the current one, and says so in to_json
        return cls(int(d["size"]), int(d["resize"]), str(d["interpolation"]),
                   tuple(d["mean"]), tuple(d["std"]))

    def crop_array(self, img: Image.Image, at: tuple[float, float] = CENTRE) -> np.ndarray:
        """The crop as a uint8 (size, size, 3) array. `at`: where the square sits in the
        resized image, as fractions (x, y) of the margin left of and above it: CENTRE (the
        evaluation crop), or (0, 0), (1, 0), (0, 1), (1, 1) for the corners (test-time `crops`)."""
        tw, th = resized_size(img.size, self.resize)
        resample = _PIL_INTERPOLATION[self.interpolation]
        if tw * th <= MAX_RESIZED_PIXELS:
            if (tw, th) != img.size:
                img = img.resize((tw, th), resample)
            return center_crop_array(np.asarray(img), self.size, at)
        cw, ch = min(self.size, tw), min(self.size, th)
        left, top = int(round((tw - cw) * at[0])), int(round((th - ch) * at[1]))
        sx, sy = img.size[0] / tw, img.size[1] / th
        box = (left * sx, top * sy, (left + cw) * sx, (top + ch) * sy)
        return center_crop_array(np.asarray(img.resize((cw, ch), resample, box=box)), self.size)

    def normalize_constants(self) -> tuple["torch.Tensor", "torch.Tensor"]:
        """(mean, 1 / std), both scaled to uint8 levels, shaped (1, 3, 1, 1): what `normalize`
        subtracts and multiplies by (and an exported graph holds as constants)."""
        import torch

        mean = torch.tensor(self.mean).view(1, 3, 1, 1) * 255.0
        return mean, 1.0 / (torch.tensor(self.std).view(1, 3, 1, 1) * 255.0)


@dataclass(frozen=True)
class Tiled(_Recipe):
    """Several backbones' evaluation preprocessings as ONE uint8 image: each one's centre crop of
    the same photo, stacked top to bottom on a canvas as wide as the widest, each centred across.

    Why: a concatenated backbone (graft.backbones.concat, `lite0+lite2`) needs every part to see
    exactly the crop it sees alone (its cached features are the ones it computed alone), and one
    array per photo keeps every door a single crop goes through unchanged: the loader and its
    workers, the Predictor, the exported graph's single uint8 input, the 60-line ONNX client.
    Centring each tile (widths of one parity, checked) makes mirroring the canvas mirror every
    tile in place, so `--tta flip` needs nothing new. `split` cuts a batch back into the tiles.
    """

    tiles: tuple[Preprocessing, ...]

    def __post_init__(self):
        if len(self.tiles) < 2 or any(not isinstance(t, Preprocessing) for t in self.tiles):
            raise GraftError("a tiled preprocessing joins two or more plain ones")
        if len({t.size % 2 for t in self.tiles}) > 1:
            raise GraftError(f"backbones with crop sizes {', '.join(str(t.size) for t in self.tiles)} cannot be "
                             f"concatenated: their sizes must all be even or all odd")

    @property
    def size(self) -> int:
        """The widest tile: what checks of a photo's shape against the network's input read."""
        return max(t.size for t in self.tiles)

    @property
    def shape(self) -> tuple[int, int]:
        return sum(t.size for t in self.tiles), self.size

    def boxes(self) -> list[tuple[int, int, int]]:
        """Per tile (top, left, side) on the canvas."""
        out, top = [], 0
        for t in self.tiles:
            out.append((top, (self.size - t.size) // 2, t.size))
            top += t.size
        return out

    def to_json(self) -> dict:
        return {"tiles": [t.to_json() for t in self.tiles], "recipe": RECIPE}

    def crop_array(self, img: Image.Image, at: tuple[float, float] = CENTRE) -> np.ndarray:
        """The canvas, uint8 (sum of sides, widest side, 3); zero outside the tiles. `at`: every
        tile's crop at that place (Preprocessing.crop_array)."""
        canvas = np.zeros((*self.shape, 3), np.uint8)
        for t, (top, left, s) in zip(self.tiles, self.boxes()):
            canvas[top:top + s, left:left + s] = t.crop_array(img, at)
        return canvas

    def split(self, x: "torch.Tensor") -> list["torch.Tensor"]:
        """(N, C, H, W) canvas batch -> each tile's (N, C, side, side) view."""
        return [x[:, :, top:top + s, left:left + s] for top, left, s in self.boxes()]

    def normalize_constants(self) -> tuple["torch.Tensor", "torch.Tensor"]:
        """(mean, 1 / std) per pixel, (1, 3, H, W): each tile's own constants over its box."""
        import torch

        mean, inv_std = torch.zeros(1, 3, *self.shape), torch.ones(1, 3, *self.shape)
        for t, (top, left, s) in zip(self.tiles, self.boxes()):
            m, i = t.normalize_constants()
            mean[:, :, top:top + s, left:left + s] = m
            inv_std[:, :, top:top + s, left:left + s] = i
        return mean, inv_std


def resized_size(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    """(w, h) after resizing the shorter side of a (w, h) image to `short_side`, rounded as
    torchvision.transforms.v2.functional.resize does (the long side truncated)."""
    w, h = size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(short_side * long / short)
    return (short_side, new_long) if w <= h else (new_long, short_side)


def center_crop_array(arr: np.ndarray, size: int, at: tuple[float, float] = CENTRE) -> np.ndarray:
    """torchvision's center_crop of an (H, W, C) array: zero padding split as it splits it when
    the image is smaller, then the offset int(round((side - size) / 2)); with `at` another
    place, int(round((side - size) * at)) (at = (0, 0): the top-left corner, as FiveCrop's)."""
    h, w = arr.shape[:2]
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        arr = np.pad(arr, ((ph // 2, (ph + 1) // 2), (pw // 2, (pw + 1) // 2), (0, 0)))
        h, w = arr.shape[:2]
    top, left = int(round((h - size) * at[1])), int(round((w - size) * at[0]))
    return arr[top:top + size, left:left + size].copy()  # writable and contiguous


def pil_to_tensor(img: Image.Image) -> "torch.Tensor":
    import torch

    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()


class CropAt:
    """A `load(path)` for loader workers: the crop of `pre` at `at` (a corner, for --tta crops),
    optionally mirrored left-right (--tta flip). A class, not a closure: workers receive it."""

    def __init__(self, pre, at: tuple[float, float] = CENTRE, mirror: bool = False):
        self.pre, self.at, self.mirror = pre, tuple(at), mirror

    def __call__(self, path) -> "torch.Tensor":
        x = self.pre.crop(read_image(path), self.at)
        return x.flip(-1) if self.mirror else x


# --- test-time augmentation: the views whose logits --tta averages ---------------------------------

TTA_MODES = ("none", "flip", "crops")  # the centre crop alone, averaged with its mirror, or with the four corners


def parse_tta(value) -> str | None:
    """--tta / tta=: None or "none" (the centre crop alone), "flip" (the centre crop and its
    left-right mirror), "crops" (the centre crop and the four corner crops of the resized photo,
    torchvision's FiveCrop), their logits averaged. -> None, "flip" or "crops"; else a GraftError."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text not in TTA_MODES:
        raise GraftError(f"--tta takes {', '.join(TTA_MODES)}, got {value!r}")
    return None if text == "none" else text


def tta_views(tta) -> list[tuple[tuple[float, float], bool]]:
    """The (at, mirror) crops whose logits --tta averages, the centre crop first."""
    tta = parse_tta(tta)
    if tta == "flip":
        return [(CENTRE, False), (CENTRE, True)]
    if tta == "crops":
        return [(at, False) for at in FIVE_CROPS]
    return [(CENTRE, False)]


class FiveCrops:
    """--tta crops as one input: the centre crop and the four corner crops of `pre`, stacked top
    to bottom in one uint8 array, so they travel through a loader as one crop does."""

    def __init__(self, pre):
        self.pre = pre

    def crop_array(self, img: Image.Image) -> np.ndarray:
        return np.concatenate([self.pre.crop_array(img, at) for at in FIVE_CROPS], axis=0)
