"""The deterministic evaluation preprocessing of a backbone: resize, centre crop, normalise.

It is part of the feature cache's key and of every saved run, so it is a small frozen dataclass
that round-trips through JSON. Images travel as uint8 tensors until `normalize`, which runs on
the consumer's side (4x less to copy out of loader workers than float32).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from .data.images import draft_size_for_short_side, read_image

_PIL_INTERPOLATION = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Preprocessing:
    size: int = 224  # the square the network sees
    resize: int = 256  # shorter side before the centre crop
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @classmethod
    def from_crop_pct(cls, size, crop_pct, interpolation, mean, std) -> "Preprocessing":
        return cls(int(size), int(math.floor(size / crop_pct)), str(interpolation),
                   tuple(float(m) for m in mean), tuple(float(s) for s in std))

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Preprocessing":
        return cls(int(d["size"]), int(d["resize"]), str(d["interpolation"]),
                   tuple(d["mean"]), tuple(d["std"]))

    def load(self, path) -> torch.Tensor:
        """Read, resize the shorter side, centre-crop: a uint8 (3, size, size) tensor."""
        return self.prepare(read_image(path, min_short_side=self.resize))

    def prepare(self, img: Image.Image) -> torch.Tensor:
        """`load` for an image already decoded to RGB (graft.predictor's in-memory inputs): one
        function after decoding, so a photo and its file go through the same pixels."""
        tw, th = draft_size_for_short_side(img.size, self.resize)
        if (tw, th) == img.size:
            return center_crop(pil_to_tensor(img), self.size)
        # resize only the region the centre crop keeps: same pixels as resize-then-crop, and no
        # huge intermediate image for extreme aspect ratios
        cw, ch = min(self.size, tw), min(self.size, th)
        left, top = (tw - cw) // 2, (th - ch) // 2
        sx, sy = img.size[0] / tw, img.size[1] / th
        box = (left * sx, top * sy, (left + cw) * sx, (top + ch) * sy)
        img = img.resize((cw, ch), _PIL_INTERPOLATION[self.interpolation], box=box)
        return center_crop(pil_to_tensor(img), self.size)

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> float32, scaled to [0, 1] then standardised."""
        mean = torch.tensor(self.mean, device=batch.device).view(1, 3, 1, 1) * 255.0
        inv_std = 1.0 / (torch.tensor(self.std, device=batch.device).view(1, 3, 1, 1) * 255.0)
        return batch.float().sub_(mean).mul_(inv_std)  # in place: one float batch, not three


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()


def center_crop(t: torch.Tensor, size: int) -> torch.Tensor:
    h, w = t.shape[-2:]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    out = t[..., top : top + size, left : left + size]
    if out.shape[-2:] != (size, size):  # smaller than the crop: pad, as torchvision does
        out = torch.nn.functional.pad(out, (0, size - out.shape[-1], 0, size - out.shape[-2]))
    return out.contiguous()

