"""Parallel image loading: worker processes decode files into uint8 tensors and collate batches.

Workers never raise on a bad file: they hand back the ImageError instead, and the consumer
skips and reports that file, so one broken photo cannot stop a run. Batches stay uint8 until the
consumer normalises them (4x less to copy out of each worker than float32).
"""

from __future__ import annotations

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
    """-> (indices, uint8 batch or None, [ImageError]); failed items are left out of the batch."""
    good = [(i, t) for i, t in items if isinstance(t, torch.Tensor)]
    errors = [t for _, t in items if not isinstance(t, torch.Tensor)]
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
