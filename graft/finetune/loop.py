"""Fine-tuning: train the last stages of the backbone (or all of them) together with a new top.

The lecture's data-size ladder past the frozen-feature head:
- `partial`: stages[:-N] stay frozen (BatchNorm in eval mode), the last N stages train from their
  pretrained weights with the new softmax; or, with `new_hidden`, the last N stages are removed
  and new hidden layers + softmax are trained on the pooled activations at the boundary.
- `full`: every stage trains, from the pretrained weights (or from scratch, for comparison).

What experts expect of the loop: AdamW, linear warm-up then cosine decay, a lower learning rate
for pretrained layers than for the new top, label smoothing, gradient clipping, early stopping on
validation loss with the best epoch kept (with no validation photo: every epoch runs and the last
is kept, as for the head, graft.heads.softmax). A checkpoint (model, optimiser, scheduler, RNG state,
position) is written atomically after every epoch, so `resume=True` continues a killed run and
ends with the same weights as an uninterrupted one: every random draw is a function of (seed,
epoch, image), never of which worker or which process did the work.

The frozen prefix's output never changes, so when the training images are not augmented its
activations at the freeze boundary are cached on disk (the feature cache, keyed by the boundary)
and each epoch runs only the trainable stages. Validation images are never augmented, so their
boundary activations are always cached.

The shape is fastai's Learner: `Trainer` builds the network, its inputs and optimiser and runs
the epochs; what happens around them (the log row, early stopping, checkpoints, Ctrl-C) are
callbacks (graft.finetune.callbacks), called at named points.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from graft.errors import GraftError
from graft.finetune.callbacks import Checkpoint, EarlyStop, EpochLog, Interrupt
from graft.finetune.classifier import Classifier, GraftedNet, boundary_activation_shape, feature_dim, reinitialise
from graft.finetune.config import FinetuneConfig, FinetuneResult, lr_factor, plan_stages
from graft.finetune.precision import autocast
from graft.heads.softmax import make_head


def finetune(backbone, data, cfg: FinetuneConfig, *, checkpoint, pipeline=None, workers=None,
             resume: bool = False, progress: bool = True, extract=None,
             boundary_cache: bool = True, aug_device: str = "workers", decoded_dir=None,
             dist=None, on_epoch=None) -> FinetuneResult:
    """Fine-tune on `data` (graft.data.Dataset with ok samples); see the module docstring.

    `checkpoint`: the file the checkpoint is written to after every epoch (and read back with
    `resume`); the run folder names it (graft.run.CHECKPOINT). `pipeline`: augmentation for
    training images (None: clean preprocessing, and then the frozen prefix's activations come from
    the boundary cache). `extract(samples, k, forward, desc)` returns their cached activations
    after the k frozen stages (used for the boundary cache; `boundary_cache=False` runs the frozen
    stages on every training batch instead, for comparison). `aug_device` "cpu"/"cuda" moves flips
    and colour ops out of the loader workers onto the consumer's CPU, or the trainer's GPU.

    Under torchrun (`dist` with several ranks) the model is wrapped in DistributedDataParallel,
    each rank trains on its share of every epoch's order (batch size per rank), losses are
    summed across ranks, and only rank 0 writes checkpoints. A checkpoint can be resumed with a
    different number of processes (from the last epoch boundary).

    `on_epoch(epoch, scalars)`, if given, is called as each epoch ends, before its checkpoint
    (epoch counted from 1; scalars: train_loss, val_loss, val_accuracy, lr (the new top's),
    lr_backbone, epoch_s, data_wait_s, step_s, val_s, data_wait_share), so a log of the run
    grows while it runs; a resumed run calls it again from the epoch it resumes.
    """
    from graft.finetune.distributed import Context

    trainer = Trainer(backbone, data, cfg, pipeline=pipeline, workers=workers, extract=extract,
                      boundary_cache=boundary_cache, aug_device=aug_device, decoded_dir=decoded_dir,
                      dist=dist or Context())
    saving = Checkpoint(checkpoint, resume=resume)
    return trainer.fit([saving, EpochLog(progress, on_epoch), EarlyStop(), Interrupt(saving)])


class Trainer:
    """One fine-tuning run: built with its network, inputs and optimiser; `fit(callbacks)` runs
    the epochs. `state` is what a checkpoint holds of the position (epoch, step, the epoch's loss
    so far, the best epoch, the history); `best_state` the best epoch's weights (None: the last)."""

    def __init__(self, backbone, data, cfg: FinetuneConfig, *, pipeline, workers, extract, boundary_cache,
                 aug_device, decoded_dir, dist):
        self.cfg, self.data, self.dist = cfg, data, dist
        torch.manual_seed(cfg.seed)
        self.device = torch.device(f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(dist.cpu_threads())  # per machine: with --nnodes 2, world is twice local
        self.k, self.cut = plan_stages(backbone, cfg)
        if cfg.from_scratch:
            reinitialise(backbone)
        head = make_head(feature_dim(backbone, self.cut), len(data.classes), cfg.new_hidden, cfg.dropout)
        # channels_last: up to 10x faster convolutions and their gradients on the CPU here
        self.net = GraftedNet(backbone, head, self.k, self.cut).to(self.device, memory_format=torch.channels_last)
        self.pre = backbone.preprocessing
        self.y_train = torch.tensor([s.label for s in data.train])
        self.y_val = torch.tensor([s.label for s in data.val])
        self._inputs(backbone, extract, boundary_cache, pipeline is None, workers)
        self._optimiser()
        self._train_batches(pipeline, aug_device, workers, decoded_dir)
        self.model: nn.Module = self.net  # wrapped for DistributedDataParallel in fit
        self.state = {"epoch": 0, "step": 0, "loss_sum": 0.0, "seen": 0, "best_loss": math.inf, "best_epoch": -1,
                      "history": {"train_loss": [], "val_loss": [], "val_accuracy": [], "epoch_s": []}}
        self.best_state = None
        self.stop = False
        self.resumed_from = None
        self.timings = {"data_wait_s": 0.0, "step_s": 0.0, "val_s": 0.0}
        self.callbacks: list = []

    def _inputs(self, backbone, extract, boundary_cache: bool, clean: bool, workers) -> None:
        """What never changes comes from the boundary cache: the validation images' activations after
        the frozen stages, and the training images' too when they are not augmented."""
        from graft.features.loader import image_loader

        k, train_s, val_s = self.k, self.data.train, self.data.val
        self.use_boundary = k > 0 and clean and extract is not None and boundary_cache
        self.z_train = self.z_val = self.val_batches = None
        if k > 0 and extract is not None:
            shape = boundary_activation_shape(backbone, k)

            def fwd(b, x):
                return b.run_stages(x, 0, k)

            self.z_val = _as_activations(extract(val_s, k, fwd, "boundary activations (val)"), shape)
            if self.use_boundary:
                self.z_train = _as_activations(extract(train_s, k, fwd, "boundary activations (train)"), shape)
        else:
            self.val_batches = image_loader([s.path for s in val_s], self.pre.load, batch_size=self.cfg.batch_size,
                                            workers=workers)

    def _optimiser(self) -> None:
        """AdamW with discriminative learning rates, warm-up then cosine decay, label smoothing."""
        cfg, net = self.cfg, self.net
        backbone_params = [p for p in net.backbone.parameters() if p.requires_grad]
        self.groups = [{"params": list(net.head.parameters()), "lr": cfg.lr}]
        if backbone_params and self.cut is None:
            self.groups.append({"params": backbone_params,
                                "lr": cfg.lr * (1.0 if cfg.from_scratch else cfg.backbone_lr_mult)})
        self.opt = torch.optim.AdamW(self.groups, weight_decay=cfg.weight_decay)
        self.steps_per_epoch = math.ceil(math.ceil(len(self.data.train) / self.dist.world) / cfg.batch_size)
        total, warmup = self.steps_per_epoch * cfg.epochs, int(cfg.warmup_epochs * self.steps_per_epoch)
        self.lr_at = lambda step: lr_factor(step, total, warmup)  # a function: the scheduler saves no state of it
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self.lr_at)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    def schedule_from_epoch(self, epoch: int) -> None:
        """Put the schedule at the start of `epoch` (a checkpoint resumed with another process count)."""
        self.sched.last_epoch = epoch * self.steps_per_epoch
        for g, base in zip(self.opt.param_groups, self.sched.base_lrs):
            g["lr"] = base * self.lr_at(self.sched.last_epoch)

    def _train_batches(self, pipeline, aug_device: str, workers, decoded_dir) -> None:
        """The training images' loader (unless they come from the boundary cache) and, with
        `aug_device` cpu or cuda, the augmentation that runs on whole batches there."""
        from graft.features.loader import EpochSampler, split_for_device, train_loader

        cfg, dist = self.cfg, self.dist
        self.loader = self.batch_aug = None
        if not self.use_boundary:
            worker_pipe = pipeline
            if pipeline is not None and aug_device in ("cpu", "cuda"):
                if aug_device == "cuda" and self.device.type != "cuda":
                    raise GraftError("--aug-device cuda: no CUDA device here; use cpu or workers")
                # "cpu": augment before the batch leaves the CPU (the trainer may be a GPU); "cuda": on it.
                aug_on = torch.device("cpu") if aug_device == "cpu" else self.device
                worker_pipe, self.batch_aug = split_for_device(pipeline, cfg.seed, aug_on, self.device)
            self.loader = train_loader(self.data.train, worker_pipe, self.pre, seed=cfg.seed,
                                       batch_size=cfg.batch_size, workers=workers, shuffle=True,
                                       decoded_dir=decoded_dir, rank=dist.rank, world=dist.world)
        self.sampler = EpochSampler(len(self.data.train), cfg.seed, rank=dist.rank, world=dist.world)

    # --- running ---------------------------------------------------------------------------------

    def fit(self, callbacks: list) -> FinetuneResult:
        """Run the epochs left, calling `callbacks` (graft.finetune.callbacks.Callback) at each point."""
        self.callbacks = callbacks
        try:
            self._call("before_fit")
            if self.dist.enabled:
                from torch.nn.parallel import DistributedDataParallel

                ids = [self.device.index] if self.device.type == "cuda" else None
                self.model = DistributedDataParallel(self.net, device_ids=ids)
            t0 = time.perf_counter()
            while self.state["epoch"] < self.cfg.epochs:
                self._epoch()
            self._call("after_fit")
        finally:
            self._call("on_exit")
        timings = {k: round(v, 4) for k, v in self.timings.items()}
        timings["loop_s"] = round(time.perf_counter() - t0, 4)
        model = Classifier(self.net.backbone, self.net.head, self.data.classes, cut=self.cut).eval()
        history = self.state["history"]
        return FinetuneResult(model, self.state["best_epoch"] + 1, len(history["val_loss"]), history, timings,
                              self.use_boundary, self.resumed_from)

    def _call(self, point: str) -> None:
        for callback in self.callbacks:
            getattr(callback, point)(self)

    def _epoch(self) -> None:
        state, timings = self.state, self.timings
        epoch = state["epoch"]
        t_epoch = time.perf_counter()
        self.net.train()
        self._call("before_epoch")
        t_wait = time.perf_counter()
        for idx, batch in self._batches(epoch):
            t_got = time.perf_counter()
            timings["data_wait_s"] += t_got - t_wait
            self._step(idx, batch, epoch)
            timings["step_s"] += time.perf_counter() - t_got
            self._call("after_batch")
            t_wait = time.perf_counter()
        self._call("after_train")
        if self.loader is not None:
            self.loader.batch_sampler.sampler.skip = 0
        t_val = time.perf_counter()
        val_loss, val_acc = _validate(self.net, self.z_val, self.val_batches, self.y_val, self.device, self.pre,
                                      self.cfg.precision)
        timings["val_s"] += time.perf_counter() - t_val
        h = state["history"]
        loss_sum, seen = self.dist.sum(state["loss_sum"], state["seen"])
        h["train_loss"].append(loss_sum / max(1, seen))
        h["val_loss"].append(val_loss)
        h["val_accuracy"].append(val_acc)
        h["epoch_s"].append(round(time.perf_counter() - t_epoch, 4))
        self._call("after_validate")
        state.update(epoch=epoch + 1, step=0, loss_sum=0.0, seen=0)
        if self.stop:
            state["epoch"] = self.cfg.epochs  # recorded as finished
        self._call("after_epoch")

    def _batches(self, epoch: int):
        """This epoch's (indices, images or None) from its current step on (a resumed epoch skips
        the steps done), in the epoch's order: a function of (seed, epoch) alone."""
        bs = self.cfg.batch_size
        skip = self.state["step"] * bs
        if self.use_boundary:
            self.sampler.set_epoch(epoch)
            order = [i for _, i in self.sampler][skip:]
            return ((order[j:j + bs], None) for j in range(0, len(order), bs))
        self.loader.batch_sampler.sampler.set_epoch(epoch)
        self.loader.batch_sampler.sampler.skip = skip
        return ((idx, batch) for idx, batch, _ in self.loader)

    def _step(self, idx, batch, epoch: int) -> None:
        cfg, state, device = self.cfg, self.state, self.device
        y = self.y_train[idx].to(device)
        with autocast(device, self.cfg.precision):
            if self.use_boundary:
                logits = self.model(_nhwc(self.z_train[idx].to(device)), boundary=True)
            else:
                if self.batch_aug is None:
                    batch = batch.to(device, non_blocking=True)
                else:  # augmented on its own device, delivered on the trainer's
                    batch = self.batch_aug(batch, [self.data.train[i].digest for i in idx], epoch)
                x = self.pre.normalize(batch)
                logits = self.model(x.contiguous(memory_format=torch.channels_last))
            loss = self.loss_fn(logits.float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_grad_norm:
            nn.utils.clip_grad_norm_([p for g in self.groups for p in g["params"]], cfg.clip_grad_norm)
        self.opt.step()
        self.sched.step()
        state["step"] += 1
        state["loss_sum"] += loss.item() * len(idx)
        state["seen"] += len(idx)


def _validate(net, z_val, val_batches, y_val, device, pre, precision="auto"):
    """(loss, accuracy) on the validation photos; (None, None) when there are none."""
    if not len(y_val):
        return None, None
    net.eval()
    logits = []
    with torch.no_grad(), autocast(device, precision):
        if z_val is not None:
            for j in range(0, len(z_val), 64):
                logits.append(net.from_boundary(_nhwc(z_val[j:j + 64].to(device))).float().cpu())
        else:
            for _, batch, _ in val_batches:
                x = pre.normalize(batch.to(device)).contiguous(memory_format=torch.channels_last)
                logits.append(net(x).float().cpu())
    logits = torch.cat(logits) if logits else torch.zeros(0, 1)
    loss = nn.functional.cross_entropy(logits, y_val).item()
    return loss, (logits.argmax(1) == y_val).float().mean().item()


def _as_activations(flat: np.ndarray, shape) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(flat)).view(len(flat), *shape)


def _nhwc(z):
    return z.contiguous(memory_format=torch.channels_last) if z.ndim == 4 else z


