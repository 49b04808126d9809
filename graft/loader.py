"""Parallel image loading: worker processes decode files into uint8 tensors and collate batches.

Workers never raise on a bad file: they hand back the ImageError instead, and the consumer
skips and reports that file, so one broken photo cannot stop a run. Batches stay uint8 until the
consumer normalises them (4x less to copy out of each worker than float32).
"""

from __future__ import annotations

import math
import os
from typing import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from .errors import ImageError


class ImageFiles(Dataset):
    """Item i is (i, uint8 tensor) or (i, ImageError), from `load(paths[i])`."""

    def __init__(self, paths: Sequence, load: Callable):
        self.paths = list(paths)
        self.load = load

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return i, self.load(self.paths[i])
        except ImageError as e:
            return i, e


def collate_images(items):
    """-> (indices, uint8 batch or None, [(index, ImageError)]); failed items leave the batch."""
    good = [(i, t) for i, t in items if isinstance(t, torch.Tensor)]
    errors = [(i, t) for i, t in items if not isinstance(t, torch.Tensor)]
    idx = [i for i, _ in good]
    batch = torch.stack([t for _, t in good]) if good else None
    return idx, batch, errors


def auto_workers(n_items: int) -> int:
    """Decoding workers for one consumer: every core but one, at least one, none for tiny jobs."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if n_items < 16:
        return 0
    return max(1, min(8, cores - 1))


def image_loader(paths, load: Callable, *, batch_size: int, workers: int | None = None) -> DataLoader:
    workers = auto_workers(len(paths)) if workers is None else workers
    return DataLoader(
        ImageFiles(paths, load),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_images,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )


# --- augmented training images -----------------------------------------------------------------

def mix_seed(*parts) -> int:
    """A 63-bit seed from any parts (ints, strings): every (run seed, epoch, image) gets its own
    random stream, so draws do not depend on which worker decodes the image or how many there are."""
    import hashlib

    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


class AugmentedLoad:
    """Decode + distort one image: `(path, (W, H), seed)` -> uint8 (3, size, size) tensor.

    All random numbers are drawn first, from the header's size; when the pipeline starts with a
    random crop, the JPEG is then decoded at the largest DCT reduction (1/2, 1/4, 1/8) that keeps
    the crop at least the output size (so a crop loses no detail), and Pillow crops and resizes
    in one pass (`resize(box=...)`, the same bicubic antialiased kernel the crop op uses on
    tensors). The other ops run on the uint8 tensor.
    """

    def __init__(self, pipeline, preprocessing):
        self.pipeline = pipeline
        self.pre = preprocessing

    def __call__(self, item) -> torch.Tensor:
        from PIL import Image

        from .augment import RandomResizedCrop
        from .data.images import read_image
        from .preprocess import _PIL_INTERPOLATION, pil_to_tensor

        path, (w, h), seed = item
        if self.pipeline is None:  # no augmentation: the evaluation preprocessing
            return self.pre.load(path)
        gen = torch.Generator().manual_seed(seed)
        ops = self.pipeline.ops
        params = self.pipeline.draw(gen, (h, w))
        if not ops or not isinstance(ops[0], RandomResizedCrop):
            return self.pipeline.apply(self.pre.load(path), params)
        crop, box = ops[0], params[0]
        out_h, out_w = crop.output_size((h, w))
        need = (math.ceil(w * out_w / max(1, box["width"])), math.ceil(h * out_h / max(1, box["height"])))
        img = read_image(path, min_size=need)
        if img.size != (w, h):  # decoded reduced (or the header lied): move the box onto it
            box = RandomResizedCrop.scale_params(box, (h, w), (img.size[1], img.size[0]))
        left, top = box["left"], box["top"]
        img = img.resize((out_w, out_h), _PIL_INTERPOLATION["bicubic"],
                         box=(left, top, left + box["width"], top + box["height"]))
        x = pil_to_tensor(img)
        for op, p in zip(ops[1:], params[1:]):
            x = op.apply(x, p)
        return x


class EpochSampler(torch.utils.data.Sampler):
    """Yields (epoch, index): a fresh, seeded order each epoch, identical after a resume."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0
        self.skip = 0  # items of this epoch already done (resuming mid-epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(mix_seed(self.seed, self.epoch)))
        else:
            order = torch.arange(self.n)
        return iter([(self.epoch, int(i)) for i in order[self.skip:]])


class TrainImages(Dataset):
    """(epoch, i) -> (i, augmented uint8 tensor or ImageError) for `samples` (data.Sample)."""

    def __init__(self, samples, pipeline, preprocessing, seed: int):
        self.samples = list(samples)
        self.load = AugmentedLoad(pipeline, preprocessing)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        epoch, i = key
        s = self.samples[i]
        try:
            return i, self.load((s.path, s.size, mix_seed(self.seed, s.digest, epoch)))
        except ImageError as e:
            return i, e


def train_loader(samples, pipeline, preprocessing, *, seed: int, batch_size: int,
                 workers: int | None = None, shuffle: bool = True, drop_last: bool = False):
    """Worker processes decode and distort; `loader.batch_sampler.sampler.set_epoch(e)` per epoch."""
    workers = auto_workers(len(samples)) if workers is None else workers
    sampler = EpochSampler(len(samples), seed, shuffle)
    return DataLoader(
        TrainImages(samples, pipeline, preprocessing, seed),
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=workers,
        collate_fn=collate_images,
        prefetch_factor=4 if workers else None,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(seed),  # leaves the global RNG (dropout) untouched
    )
