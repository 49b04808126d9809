"""What the Predictor takes, turned into what the network sees: a path, encoded bytes, a PIL image
of any mode or an HxWx3 uint8 numpy array -> the uint8 (size, size, 3) crop of the run's
evaluation preprocessing (graft.backbones.preprocess).

Files and encoded bytes go through the door every photo comes through (graft.data.images.read_image,
with its format, size and decompression-bomb checks); decoded images (PIL, numpy) meet the same
EXIF orientation and RGB conversion (graft.data.images.decoded_to_rgb)."""

from __future__ import annotations

import functools
import os

import numpy as np
from PIL import Image

from graft.backbones.preprocess import FiveCrops, Preprocessing
from graft.data.images import decoded_to_rgb, read_image
from graft.errors import ImageError

IN_PROCESS = 16  # fewer inputs than this are decoded in the calling thread (graft.features.loader.auto_workers' rule)


def input_kind(item) -> str:
    """"path", "bytes", "image" or "array"; TypeError for anything else."""
    if isinstance(item, (str, os.PathLike)):
        return "path"
    if isinstance(item, (bytes, bytearray, memoryview)):
        return "bytes"
    if isinstance(item, Image.Image):
        return "image"
    if isinstance(item, np.ndarray):
        return "array"
    raise TypeError(f"Predictor takes paths, PIL images, numpy arrays or encoded bytes, not {type(item).__name__}")


def crop(pre: Preprocessing | FiveCrops, kind: str, item) -> np.ndarray:
    """One input of `kind` (input_kind's) -> the uint8 crop `pre` makes; ImageError if unusable."""
    if kind == "path":
        return pre.crop_array(read_image(item))
    if kind == "bytes":
        if not len(item):
            raise ImageError("<bytes>", "empty input (0 bytes)", "empty_file")
        return pre.crop_array(read_image("<bytes>", data=bytes(item)))
    if kind == "array":
        item = _array_image(item)
    return _image_crop(pre, item)


def crop_tensor(pre: Preprocessing | FiveCrops, kind_item):
    """image_loader's `load`: module-level, so decoding workers get the preprocessing, not the model."""
    import torch

    return torch.from_numpy(crop(pre, *kind_item)).permute(2, 0, 1)


def crop_batches(pre: Preprocessing | FiveCrops, todo: list[int], items, kinds, batch_size: int,
                 workers: int | None):
    """Yield (rows, uint8 (n, S, S, 3) crops or None, [(row, reason)]) over the inputs `todo`
    indexes, in order: decoded in this thread (`workers` 0, or None for fewer than IN_PROCESS),
    else in decoding processes (graft.features.loader.image_loader)."""
    if workers == 0 or (workers is None and len(todo) < IN_PROCESS):
        for start in range(0, len(todo), batch_size):
            rows, crops, errors = [], [], []
            for i in todo[start:start + batch_size]:
                try:
                    crops.append(crop(pre, kinds[i], items[i]))
                    rows.append(i)
                except ImageError as e:
                    errors.append((i, e.reason))
            yield rows, (np.stack(crops) if crops else None), errors
        return
    from graft.features.loader import image_loader  # decoding processes: torch's DataLoader

    load = functools.partial(crop_tensor, pre)
    for idx, batch, errors in image_loader([(kinds[i], items[i]) for i in todo], load,
                                           batch_size=batch_size, workers=workers):
        crops = None if batch is None else batch.permute(0, 2, 3, 1).numpy()
        yield [todo[j] for j in idx], crops, [(todo[j], e.reason) for j, e in errors]


def _float_to_l(img: Image.Image) -> Image.Image:
    """A mode-F (32-bit float) image as graft.data.images.to_rgb scales F and I pixels (0..255, or
    0..65535 when a pixel is over 255, to 8 bits), its EXIF kept: to_rgb scales them in place, and
    Pillow hands F pixels over as a read-only array ("output array is read-only"). NaN is black."""
    arr = np.nan_to_num(np.array(img, dtype=np.float32), nan=0.0, posinf=65535.0, neginf=0.0)
    hi = 65535.0 if arr.size and arr.max() > 255 else 255.0
    arr *= np.float32(255.0 / hi)
    arr += np.float32(0.5)
    np.clip(arr, 0, 255, out=arr)
    out = Image.fromarray(arr.astype(np.uint8), "L")
    out.info = dict(img.info)
    return out


def _array_image(arr: np.ndarray) -> Image.Image:
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or 0 in arr.shape:
        raise ImageError("<array>", f"numpy input must be an HxWx3 uint8 RGB array, got {arr.dtype} "
                                    f"{'x'.join(map(str, arr.shape))}")
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def _image_crop(pre: Preprocessing | FiveCrops, img: Image.Image) -> np.ndarray:
    """A decoded image's crop, the image first made what read_image makes of a file."""
    try:
        if img.mode == "F":
            img = _float_to_l(img)
        elif img.mode == "La":  # premultiplied: Pillow converts it to LA only, which to_rgb composites
            img = img.convert("LA")
        return pre.crop_array(decoded_to_rgb(img))
    except ImageError:
        raise
    except Exception as e:  # a lazily opened PIL image can fail now, on its pixels
        raise ImageError("<image>", f"cannot use image ({e or type(e).__name__})") from None
