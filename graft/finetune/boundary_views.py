"""Boundary-view fine-tuning: the lecture's "freeze the early layers and cache their activations",
kept with augmentation (issue 23).

Today's partial fine-tuning with augmentation decodes, distorts and pushes every training photo
through the whole network every epoch, although the frozen stages never change: on a CPU most of
an epoch is that prefix. Here the prefix's activations (at the freeze boundary) of K augmented
views of each training photo are computed once into the feature cache, keyed like --aug-views'
pooled views (content digest, augmentation key, kernels' version, seed, view index) under the
boundary's own namespace, so a rerun or a second run computes nothing. Each epoch then trains only
the trainable stages, every photo seen through one of its K views: view (epoch + a per-photo phase)
mod K, a function of (seed, photo, epoch) alone, so a resumed run sees the very same views. The
validation photos' activations come from the boundary cache, clean, as always.

The cost moves from epochs x (prefix + top) per photo to K x prefix + epochs x top; the price is
K fixed draws of each photo instead of a fresh one every epoch.
"""

from __future__ import annotations

import numpy as np
import torch

from graft.data import BATCH_SIZE
from graft.errors import GraftError
from graft.features.extract import extract_features
from graft.finetune.callbacks import Checkpoint, EarlyStop, EpochLog, Interrupt
from graft.finetune.classifier import boundary_activation_shape
from graft.finetune.config import FinetuneConfig, FinetuneResult
from graft.finetune.loop import Trainer


def view_names(samples, key: str, seed: int, k: int) -> list[list[str]]:
    """Each sample's K view entries, named as graft.features.extract.extract_views names them (the
    namespace, here the boundary's, tells them from pooled views)."""
    from graft.augment import KERNELS

    return [[f"{s.digest}@{key}k{KERNELS}:{seed}#{v}" for v in range(k)] for s in samples]


def boundary_views(backbone, samples, cache, pipeline, k_views: int, k_stages: int, *, seed: int,
                   batch_size: int = BATCH_SIZE, workers: int | None = None, progress: bool = True,
                   stats=None, decoded_dir=None, dist=None) -> np.ndarray:
    """-> (N, K, flat) float32: the activations after the first `k_stages` stages of `backbone` of
    K augmented draws of each sample, from `cache` (a FeatureCache of the boundary's namespace),
    computing only what is missing. View v of a photo is drawn from a stream seeded by (seed,
    content digest, augmentation key, v), as extract_views draws it."""
    from graft.features.loader import AugmentedLoad, decoded_cache_for, mix_seed

    key = pipeline.config().key()
    grid = view_names(samples, key, seed, k_views)
    names = [n for row in grid for n in row]
    items = [(s.path, s.size, mix_seed(seed, s.digest, key, v), s.digest) for s in samples for v in range(k_views)]
    decoded = decoded_cache_for(samples, pipeline, decoded_dir, None)
    feats, ok, _ = extract_features(lambda: backbone, names, items, cache,
                                    load=AugmentedLoad(pipeline, backbone.preprocessing, decoded),
                                    batch_size=batch_size, workers=workers, progress=progress,
                                    desc=f"boundary views x{k_views}", stats=stats, dist=dist,
                                    forward=lambda b, x: b.run_stages(x, 0, k_stages))
    if not ok.all():
        bad = samples[int(np.flatnonzero(~ok)[0]) // k_views].path
        raise GraftError(f"could not read {bad} for its augmented views although it was read before "
                         f"(changed meanwhile?): run the command again")
    return feats.reshape(len(samples), k_views, -1)


class EpochViews:
    """The training photos' cached views, indexed like the boundary cache's clean rows: `[idx]`
    gives each photo's view for the current `epoch` (set by the trainer as each epoch starts)."""

    def __init__(self, views: np.ndarray, shape: tuple, phases: np.ndarray):
        n, k = views.shape[:2]
        self.views = torch.from_numpy(np.ascontiguousarray(views)).view(n, k, *shape)
        self.phases = torch.as_tensor(phases, dtype=torch.long)
        self.k = k
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.views)

    def view_of(self, idx) -> torch.Tensor:
        """The view index each photo of `idx` is seen through this epoch."""
        return (self.epoch + self.phases[idx]) % self.k

    def __getitem__(self, idx) -> torch.Tensor:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return self.views[idx, self.view_of(idx)]


def phases(samples, seed: int, k: int) -> np.ndarray:
    """Each photo's first view: spread by content digest, so one epoch mixes every view index."""
    from graft.features.loader import mix_seed

    return np.array([mix_seed(seed, "phase", s.digest) % k for s in samples], dtype=np.int64)


class ViewTrainer(Trainer):
    """graft.finetune.loop.Trainer whose training inputs are the cached boundary views: the loop,
    its optimiser, schedule, callbacks and checkpoints are the same; only the inputs differ."""

    def __init__(self, backbone, data, cfg: FinetuneConfig, *, views_of, extract, workers, dist):
        self._views_of = views_of
        super().__init__(backbone, data, cfg, pipeline=None, workers=workers, extract=extract, boundary_cache=True,
                         aug_device="workers", decoded_dir=None, dist=dist)

    def _inputs(self, backbone, extract, boundary_cache: bool, clean: bool, workers) -> None:
        k, cfg = self.k, self.cfg
        if k == 0 or self.cut is not None:
            raise GraftError("boundary views need frozen stages and the network's own top: use them with "
                             "--strategy partial, without --new-hidden")
        shape = boundary_activation_shape(backbone, k)

        def fwd(b, x):
            return b.run_stages(x, 0, k)

        self.use_boundary, self.val_batches = True, None
        z_val = np.ascontiguousarray(extract(self.data.val, k, fwd, "boundary activations (val)"))
        self.z_val = torch.from_numpy(z_val).view(len(z_val), *shape)
        views = self._views_of(self.data.train, k)
        self.z_train = EpochViews(views, shape, phases(self.data.train, cfg.seed, cfg.boundary_views))

    def _batches(self, epoch: int):
        self.z_train.epoch = epoch
        return super()._batches(epoch)


def finetune_on_views(backbone, data, cfg: FinetuneConfig, *, views_of, extract, checkpoint, workers=None,
                      resume: bool = False, progress: bool = True, dist=None, on_epoch=None) -> FinetuneResult:
    """graft.finetune.loop.finetune over cached boundary views: `views_of(samples, k)` -> (N,
    cfg.boundary_views, flat) activations after the k frozen stages (boundary_views, bound to
    the run's cache and augmentation); `extract` as finetune's, for the validation photos."""
    from graft.finetune.distributed import Context

    if cfg.boundary_views < 1:
        raise GraftError("boundary-view fine-tuning needs at least one view (FinetuneConfig.boundary_views)")
    trainer = ViewTrainer(backbone, data, cfg, views_of=views_of, extract=extract, workers=workers,
                          dist=dist or Context())
    saving = Checkpoint(checkpoint, resume=resume)
    return trainer.fit([saving, EpochLog(progress, on_epoch), EarlyStop(), Interrupt(saving)])
