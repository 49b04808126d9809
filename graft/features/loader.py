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

from graft.errors import ImageError


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
    batch = None
    if good:
        tensors = [t for _, t in good]
        out = None
        if torch.utils.data.get_worker_info() is not None:  # stack straight into shared memory,
            n = sum(t.numel() for t in tensors)  # as default_collate does: one copy fewer
            out = tensors[0].new(tensors[0].untyped_storage()._new_shared(n)).resize_(len(tensors), *tensors[0].shape)
        batch = torch.stack(tensors, out=out)
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


class DecodeThenForward:
    """Batches of (indices, uint8 batch or None, errors), as image_loader yields them, each decoded
    on `threads` threads of this process while the consumer waits, then handed over: decoding and
    the forward pass take turns on the cores instead of running at once (see decoding)."""

    PREFETCH = 2  # batches started at once, to decode while the network is built

    def __init__(self, paths, load: Callable, *, batch_size: int, threads: int):
        from concurrent.futures import ThreadPoolExecutor

        self.files = ImageFiles(paths, load)
        self.batch_size = batch_size
        self.starts = list(range(0, len(self.files), batch_size))
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="graft-decode")
        self.pending = [self._submit(k) for k in range(min(self.PREFETCH, len(self.starts)))]

    def _submit(self, k: int) -> list:
        lo = self.starts[k]
        return [self.pool.submit(self.files.__getitem__, i) for i in range(lo, min(lo + self.batch_size, len(self.files)))]

    def __iter__(self):
        try:
            for k in range(len(self.starts)):
                futures = self.pending.pop(0) if self.pending else self._submit(k)
                yield collate_images([f.result() for f in futures])
        finally:
            self.close()

    def close(self) -> None:
        """Drop what is not decoded yet and let the threads end (also when never iterated)."""
        self.pool.shutdown(wait=True, cancel_futures=True)


def decoding(paths, load: Callable, *, batch_size: int, workers: int | None, threads: int):
    """Batches for a forward pass on this process's `threads` CPU cores: decoded in turns with it
    (DecodeThenForward) unless workers were asked for by number or CUDA runs the forward pass.

    Why: on a CPU the engine (onnxruntime, torch) runs each operator on every core and waits for
    its slowest thread; a decoding process that takes one of those cores stalls all of them.
    Taking turns, each has the cores to itself (Pillow's decoding and resizing release the GIL):
    graft's cold default run on ants/bees 1.10-1.14x faster (bench/cold_run.py), the extraction
    alone up to 1.5x once the network is built (bench/extraction.py)."""
    if workers is None and not torch.cuda.is_available():
        return DecodeThenForward(paths, load, batch_size=batch_size, threads=threads)
    return image_loader(paths, load, batch_size=batch_size, workers=workers)


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
    the crop at least the output size (so a crop loses no detail), only the crop box is turned
    into a tensor, and the pipeline's fast path distorts it (Pipeline.apply_fused: the crop's
    resize, rotation, shear and warp in one resample, the colour ops in one float pass).
    """

    def __init__(self, pipeline, preprocessing, decoded=None):
        self.pipeline = pipeline
        self.pre = preprocessing
        self.decoded = decoded  # a DecodedCache: decode once, crop from the stored pixels after

    def __call__(self, item) -> torch.Tensor:
        from graft.augment import RandomResizedCrop
        from graft.data.images import read_image
        from graft.backbones.preprocess import pil_to_tensor

        path, (w, h), seed, *digest = item
        if self.pipeline is None:  # no augmentation: the evaluation preprocessing
            return self.pre.load(path)
        gen = torch.Generator().manual_seed(seed)
        ops = self.pipeline.ops
        if not ops or not isinstance(ops[0], RandomResizedCrop):  # no crop: distort the evaluation view
            x = self.pre.load(path)
            return self.pipeline.apply_fused(x, self.pipeline.draw(gen, tuple(x.shape[-2:])))
        params = self.pipeline.draw(gen, (h, w))
        crop, box = ops[0], params[0]
        out_h, out_w = crop.output_size((h, w))
        if self.decoded is not None and digest:
            from graft.data.decoded import reduction_for

            arr = self.decoded.load(path, digest[0], (w, h), reduction_for((w, h), crop, (out_h, out_w)))
            if arr.shape[:2] != (h, w):
                box = RandomResizedCrop.scale_params(box, (h, w), arr.shape[:2])
            t, l_ = box["top"], box["left"]
            region = torch.from_numpy(arr[t:t + box["height"], l_:l_ + box["width"]].copy())
            region = region.permute(2, 0, 1)
        else:
            need = (math.ceil(w * out_w / max(1, box["width"])), math.ceil(h * out_h / max(1, box["height"])))
            img = read_image(path, min_size=need)
            if img.size != (w, h):  # decoded reduced (or the header lied): move the box onto it
                box = RandomResizedCrop.scale_params(box, (h, w), (img.size[1], img.size[0]))
            left, top = box["left"], box["top"]
            region = pil_to_tensor(img.crop((left, top, left + box["width"], top + box["height"])))
        whole = {"top": 0, "left": 0, "height": region.shape[1], "width": region.shape[2]}
        return self.pipeline.apply_fused(region, [whole] + params[1:])


class EpochSampler(torch.utils.data.Sampler):
    """Yields (epoch, index): a fresh, seeded order each epoch, identical after a resume."""

    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0
        self.rank, self.world = rank, world  # under torchrun: this rank's share of each epoch
        self.skip = 0  # items of this (rank's) epoch already done (resuming mid-epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.n / self.world) - self.skip

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(mix_seed(self.seed, self.epoch)))
        else:
            order = torch.arange(self.n)
        if self.world > 1 and self.n % self.world:  # equal shares, as DistributedSampler pads: every
            order = torch.cat([order, order[: self.world - self.n % self.world]])  # rank steps alike
        mine = order[self.rank :: self.world]
        return iter([(self.epoch, int(i)) for i in mine[self.skip:]])


class TrainImages(Dataset):
    """(epoch, i) -> (i, augmented uint8 tensor or ImageError) for `samples` (data.Sample)."""

    def __init__(self, samples, pipeline, preprocessing, seed: int, decoded=None):
        self.samples = list(samples)
        self.load = AugmentedLoad(pipeline, preprocessing, decoded)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        epoch, i = key
        s = self.samples[i]
        try:
            return i, self.load((s.path, s.size, mix_seed(self.seed, s.digest, i, epoch), s.digest))
        except ImageError as e:
            return i, e


def train_loader(samples, pipeline, preprocessing, *, seed: int, batch_size: int,
                 workers: int | None = None, shuffle: bool = True, drop_last: bool = False,
                 decoded_dir=None, decoded_budget: int | None = None, rank: int = 0, world: int = 1):
    """Worker processes decode and distort; `loader.batch_sampler.sampler.set_epoch(e)` per epoch.

    With `decoded_dir`, photos are decoded once and later epochs crop from the stored pixels
    (graft.data.decoded), when the data set's decoded size fits `decoded_budget` bytes.
    """
    workers = auto_workers(len(samples)) if workers is None else workers
    decoded = decoded_cache_for(samples, pipeline, decoded_dir, decoded_budget)
    sampler = EpochSampler(len(samples), seed, shuffle, rank=rank, world=world)
    return DataLoader(
        TrainImages(samples, pipeline, preprocessing, seed, decoded),
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


def decoded_cache_for(samples, pipeline, root, budget):
    from graft.augment import RandomResizedCrop
    from graft.data.decoded import DEFAULT_BUDGET, DecodedCache, estimate_bytes

    if root is None or pipeline is None or not pipeline.ops or not isinstance(pipeline.ops[0], RandomResizedCrop):
        return None
    crop = pipeline.ops[0]
    need = estimate_bytes([s.size for s in samples], crop, crop.output_size((1, 1)))
    if need > (DEFAULT_BUDGET if budget is None else budget):
        return None
    return DecodedCache(root)


class BatchAugment:
    """Flips and colour ops applied by the consumer to a whole uint8 batch, on `device` (the CPU
    or the trainer's GPU), then handed over on the trainer's device (`to`).

    torchvision applies one random draw to a whole batch; here every sample gets its own draw,
    from a generator seeded by (run seed, image, epoch) exactly like the worker-side ops, so the
    result does not depend on batch composition and a resumed run draws the same numbers.
    """

    def __init__(self, pipeline, seed: int, device, to):
        self.pipe = pipeline  # batchable ops only (Pipeline.split_batchable)
        self.seed = seed
        self.device, self.to = torch.device(device), torch.device(to)

    def __len__(self) -> int:
        return len(self.pipe)

    def __call__(self, batch: torch.Tensor, digests, epoch: int) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=True)
        if len(self.pipe):
            size = tuple(batch.shape[-2:])
            draws = [self.pipe.draw(torch.Generator().manual_seed(mix_seed(self.seed, d, epoch, "batch")), size)
                     for d in digests]
            batch = self.pipe.apply_per_sample(batch, draws)
        return batch.to(self.to, non_blocking=True)


def split_for_device(pipeline, seed: int, device, to):
    """-> (worker pipeline, BatchAugment running the batchable ops on `device` before the batch
    moves to the trainer's device `to`): see graft.augment.Pipeline.split_batchable."""
    per_image, per_batch = pipeline.split_batchable()
    return per_image, BatchAugment(per_batch, seed, device, to)
