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
"""

from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from graft._util.atomic import atomic_path
from graft.errors import GraftError
from graft.finetune.classifier import Classifier, GraftedNet, boundary_activation_shape, feature_dim, reinitialise
from graft.heads.softmax import make_head

log = logging.getLogger("graft")

CHECKPOINT = "checkpoint.pt"


@dataclass
class FinetuneConfig:
    strategy: str = "partial"  # "partial" or "full"
    train_stages: int = 2  # partial: how many of the last backbone stages train (or are replaced)
    new_hidden: tuple = ()  # replace the last `train_stages` stages by these hidden layers
    dropout: float = 0.2
    from_scratch: bool = False  # full: random initialisation instead of the pretrained weights
    epochs: int = 15
    batch_size: int = 32
    lr: float = 1e-3  # the new top's learning rate
    backbone_lr_mult: float = 0.1  # pretrained layers learn at lr * this (1.0 from scratch)
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    clip_grad_norm: float = 1.0
    patience: int = 5  # epochs without a lower validation loss before stopping; 0 = never
    seed: int = 0

    def to_json(self) -> dict:
        d = asdict(self)
        d["new_hidden"] = list(self.new_hidden)
        return d


@dataclass
class FinetuneResult:
    model: nn.Module  # the Classifier, best epoch's weights
    best_epoch: int
    epochs_run: int
    history: dict
    timings: dict
    boundary_cache: bool
    resumed_from: int | None = None


def plan_stages(backbone, cfg: FinetuneConfig) -> tuple[int, int | None]:
    """-> (k frozen stages, cut). Checks the request against the backbone's stages."""
    n = len(backbone.stage_names)
    if cfg.strategy not in ("partial", "full"):
        raise GraftError(f"fine-tuning trains 'partial' or 'full', not {cfg.strategy!r}")
    if cfg.from_scratch and cfg.strategy != "full":
        raise GraftError("--from-scratch trains every layer from random weights: use it with --strategy full")
    if cfg.strategy == "full":
        if cfg.new_hidden:
            raise GraftError("--new-hidden replaces the last stages; use it with --strategy partial")
        return 0, None
    if not 1 <= cfg.train_stages <= n - 1:
        raise GraftError(f"--train-stages must be between 1 and {n - 1} for {backbone.arch} "
                         f"(its stages: {', '.join(backbone.stage_names)})")
    if not backbone.sequential:
        raise GraftError(f"partial fine-tuning needs the stage-by-stage forward of the backbone, which graft "
                         f"does not know for {backbone.arch}; use --strategy full or head")
    k = n - cfg.train_stages
    return k, (k if cfg.new_hidden else None)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1 over `warmup` steps, then cosine decay to 0 at `total`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def finetune(backbone, data, cfg: FinetuneConfig, *, run_dir, pipeline=None, workers=None,
             resume: bool = False, progress: bool = True, extract=None,
             boundary_cache: bool = True, aug_device: str = "workers", decoded_dir=None,
             dist=None, on_epoch=None) -> FinetuneResult:
    """Fine-tune on `data` (graft.data.Dataset with ok samples); see the module docstring.

    `pipeline`: augmentation for training images (None: clean preprocessing, and then the frozen
    prefix's activations come from the boundary cache). `extract(samples, k, forward, desc)`
    returns their cached activations after the k frozen stages (used for the boundary cache;
    `boundary_cache=False` runs the frozen stages on every training batch instead, for
    comparison). `aug_device` "cpu"/"cuda" moves flips and colour ops out of the loader workers
    onto the consumer's CPU, or the trainer's GPU.

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

    dist = dist or Context()
    from graft.features.loader import EpochSampler, image_loader, train_loader

    torch.manual_seed(cfg.seed)
    device = torch.device(f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(dist.cpu_threads())  # per machine: with --nnodes 2, world is twice local
    k, cut = plan_stages(backbone, cfg)
    if cfg.from_scratch:
        reinitialise(backbone)
    n_classes = len(data.classes)
    feat_dim = feature_dim(backbone, cut)
    head = make_head(feat_dim, n_classes, cfg.new_hidden, cfg.dropout)
    # channels_last: up to 10x faster convolutions and their gradients on the CPU here
    net = GraftedNet(backbone, head, k, cut).to(device, memory_format=torch.channels_last)
    pre = backbone.preprocessing
    train_s, val_s = data.train, data.val
    y_train = torch.tensor([s.label for s in train_s])
    y_val = torch.tensor([s.label for s in val_s])

    # --- inputs: boundary cache for what never changes ------------------------------------------
    use_boundary = k > 0 and pipeline is None and extract is not None and boundary_cache
    boundary_shape = None
    if k > 0 and extract is not None:
        boundary_shape = boundary_activation_shape(backbone, k)

        def fwd(b, x):
            return b.run_stages(x, 0, k)

        z_val = _as_activations(extract(val_s, k, fwd, "boundary activations (val)"), boundary_shape)
        z_train = (_as_activations(extract(train_s, k, fwd, "boundary activations (train)"), boundary_shape)
                   if use_boundary else None)
        val_batches = None
    else:
        z_val = z_train = None
        val_batches = image_loader([s.path for s in val_s], pre.load, batch_size=cfg.batch_size, workers=workers)

    # --- optimiser: discriminative learning rates ------------------------------------------------
    backbone_params = [p for p in net.backbone.parameters() if p.requires_grad]
    backbone_lr = cfg.lr * (1.0 if cfg.from_scratch else cfg.backbone_lr_mult)
    groups = [{"params": list(net.head.parameters()), "lr": cfg.lr}]
    if backbone_params and cut is None:
        groups.append({"params": backbone_params, "lr": backbone_lr})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(math.ceil(len(train_s) / dist.world) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    state = {"epoch": 0, "step": 0, "loss_sum": 0.0, "seen": 0, "best_loss": math.inf, "best_epoch": -1,
             "history": {"train_loss": [], "val_loss": [], "val_accuracy": [], "epoch_s": []}}
    best_state = None
    ckpt_path = run_dir / CHECKPOINT
    resumed_from = None
    if resume and not ckpt_path.is_file():
        # killed before its first checkpoint (e.g. during feature extraction, which resumes from
        # the cache by itself): there is nothing to restore, so this is simply the first run
        log.warning("--resume: no checkpoint in %s yet; training from the start", run_dir)
    elif resume:
        ck = _load_checkpoint(ckpt_path, cfg)
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["rng"])
        best_state = ck.get("best_model")
        state.update(ck["state"])
        if ck.get("world", 1) != dist.world:  # another process count: restart the epoch, re-time the LR
            state.update(step=0, loss_sum=0.0, seen=0)
            sched.last_epoch = state["epoch"] * steps_per_epoch
            for g, base in zip(opt.param_groups, sched.base_lrs):
                g["lr"] = base * lr_factor(sched.last_epoch, total, warmup)
        resumed_from = state["epoch"]
        log.info("resuming from epoch %d, step %d of %s", state["epoch"], state["step"], ckpt_path)

    loader = None
    batch_aug = None
    if not use_boundary:
        worker_pipe = pipeline
        if pipeline is not None and aug_device in ("cpu", "cuda"):
            from graft.features.loader import split_for_device

            if aug_device == "cuda" and device.type != "cuda":
                raise GraftError("--aug-device cuda: no CUDA device here; use cpu or workers")
            # "cpu": augment before the batch leaves the CPU (the trainer may be a GPU); "cuda": on it.
            aug_on = torch.device("cpu") if aug_device == "cpu" else device
            worker_pipe, batch_aug = split_for_device(pipeline, cfg.seed, aug_on, device)
        loader = train_loader(train_s, worker_pipe, pre, seed=cfg.seed, batch_size=cfg.batch_size,
                              workers=workers, shuffle=True, decoded_dir=decoded_dir,
                              rank=dist.rank, world=dist.world)
    sampler = EpochSampler(len(train_s), cfg.seed, rank=dist.rank, world=dist.world)
    model = net
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

    interrupted = {"flag": False}

    def on_sigint(signum, frame):
        if interrupted["flag"]:
            raise KeyboardInterrupt
        interrupted["flag"] = True
        log.warning("interrupt: finishing this step and saving a checkpoint (Ctrl-C again to abort)")

    old_handler = signal.signal(signal.SIGINT, on_sigint) if _main_thread() else None
    timings = {"data_wait_s": 0.0, "step_s": 0.0, "val_s": 0.0}
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    try:
        while state["epoch"] < cfg.epochs:
            epoch = state["epoch"]
            t_epoch = time.perf_counter()
            at_start = dict(timings)
            net.train()
            bar = tqdm(total=steps_per_epoch, initial=state["step"], desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       unit="step", disable=not progress, leave=False)
            skip = state["step"] * cfg.batch_size
            if use_boundary:
                sampler.set_epoch(epoch)
                order = [i for _, i in sampler][skip:]
                batches = ((order[j:j + cfg.batch_size], None) for j in range(0, len(order), cfg.batch_size))
            else:
                loader.batch_sampler.sampler.set_epoch(epoch)
                loader.batch_sampler.sampler.skip = skip
                batches = ((idx, batch) for idx, batch, _ in loader)
            t_wait = time.perf_counter()
            for idx, batch in batches:
                t_got = time.perf_counter()
                timings["data_wait_s"] += t_got - t_wait
                y = y_train[idx].to(device)
                with _autocast(device):
                    if use_boundary:
                        logits = model(_nhwc(z_train[idx].to(device)), boundary=True)
                    else:
                        if batch_aug is None:
                            batch = batch.to(device, non_blocking=True)
                        else:  # augmented on its own device, delivered on the trainer's
                            batch = batch_aug(batch, [train_s[i].digest for i in idx], epoch)
                        x = pre.normalize(batch)
                        logits = model(x.contiguous(memory_format=torch.channels_last))
                    loss = loss_fn(logits.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip_grad_norm:
                    nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], cfg.clip_grad_norm)
                opt.step()
                sched.step()
                state["step"] += 1
                state["loss_sum"] += loss.item() * len(idx)
                state["seen"] += len(idx)
                timings["step_s"] += time.perf_counter() - t_got
                bar.update(1)
                if interrupted["flag"]:
                    if dist.is_main:
                        _save_checkpoint(ckpt_path, net, opt, sched, state, best_state, cfg, dist.world)
                    bar.close()
                    raise GraftError(f"interrupted at epoch {epoch + 1}, step {state['step']}; saved {ckpt_path}. "
                                     f"Resume with the same command and --resume")
                t_wait = time.perf_counter()
            bar.close()
            if loader is not None:
                loader.batch_sampler.sampler.skip = 0
            t_val = time.perf_counter()
            val_loss, val_acc = _validate(net, z_val, val_batches, y_val, device, pre)
            timings["val_s"] += time.perf_counter() - t_val
            h = state["history"]
            loss_sum, seen = dist.sum(state["loss_sum"], state["seen"])
            h["train_loss"].append(loss_sum / max(1, seen))
            h["val_loss"].append(val_loss)
            h["val_accuracy"].append(val_acc)
            h["epoch_s"].append(round(time.perf_counter() - t_epoch, 4))
            if progress and val_loss is None:
                log.info("epoch %d/%d: train loss %.4f (no validation photo)", epoch + 1, cfg.epochs,
                         h["train_loss"][-1])
            elif progress:
                log.info("epoch %d/%d: train loss %.4f, val loss %.4f, val accuracy %.4f", epoch + 1, cfg.epochs,
                         h["train_loss"][-1], val_loss, val_acc)
            if on_epoch is not None:
                on_epoch(epoch + 1, _epoch_scalars(h, timings, at_start, opt))
            if val_loss is None:  # nothing to choose on: the last epoch is the result, no early stop
                state["best_epoch"], best_state = epoch, None
            elif val_loss < state["best_loss"] - 1e-6:
                state["best_loss"], state["best_epoch"] = val_loss, epoch
                best_state = {k_: v.detach().clone() for k_, v in net.state_dict().items()}
            state.update(epoch=epoch + 1, step=0, loss_sum=0.0, seen=0)
            stop = cfg.patience and state["epoch"] - 1 - state["best_epoch"] >= cfg.patience
            if stop:
                state["epoch"] = cfg.epochs  # recorded as finished
            if dist.is_main:
                _save_checkpoint(ckpt_path, net, opt, sched, state, best_state, cfg, dist.world)
            if stop:
                break
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
    if best_state is not None:
        net.load_state_dict(best_state)
    timings = {k_: round(v, 4) for k_, v in timings.items()}
    timings["loop_s"] = round(time.perf_counter() - t0, 4)
    model = Classifier(net.backbone, net.head, data.classes, cut=cut).eval()
    return FinetuneResult(model, state["best_epoch"] + 1, len(state["history"]["val_loss"]), state["history"],
                          timings, use_boundary, resumed_from)


def _epoch_scalars(h: dict, timings: dict, at_start: dict, opt) -> dict:
    """One epoch's row of the training log: its losses, accuracy, learning rates at its end,
    and its share of the timings (the trainer's waits for data against its computing)."""
    spent = {k: timings[k] - at_start[k] for k in ("data_wait_s", "step_s", "val_s")}
    busy = spent["data_wait_s"] + spent["step_s"]
    groups = opt.param_groups
    return {"train_loss": h["train_loss"][-1], "val_loss": h["val_loss"][-1], "val_accuracy": h["val_accuracy"][-1],
            "lr": groups[0]["lr"], "lr_backbone": groups[1]["lr"] if len(groups) > 1 else None,
            "epoch_s": h["epoch_s"][-1], **spent, "data_wait_share": spent["data_wait_s"] / busy if busy else None}


def _validate(net, z_val, val_batches, y_val, device, pre):
    """(loss, accuracy) on the validation photos; (None, None) when there are none."""
    if not len(y_val):
        return None, None
    net.eval()
    logits = []
    with torch.no_grad(), _autocast(device):
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


def _save_checkpoint(path, net, opt, sched, state, best_state, cfg, world: int = 1):
    payload = {"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
               "rng": torch.get_rng_state(), "state": state, "best_model": best_state, "config": cfg.to_json(),
               "world": world}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _load_checkpoint(path, cfg):
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise GraftError(f"cannot read checkpoint {path} ({str(e).splitlines()[0][:200]}); "
                         f"start again without --resume") from None
    saved = dict(ck.get("config", {}))
    now = cfg.to_json()
    # every setting changes the result (batch size and LR the steps, epochs the schedule): a resumed
    # run takes none new, and says which differ rather than recording values it did not train with
    changed = [f"{key}={saved[key]!r} (now {now[key]!r})" for key in now if key in saved and saved[key] != now[key]]
    if changed:
        raise GraftError(f"--resume: the checkpoint in {path.parent} was made with {', '.join(changed)}; "
                         f"resume with the same settings, or start again without --resume")
    return ck


def _as_activations(flat: np.ndarray, shape) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(flat)).view(len(flat), *shape)


def _nhwc(z):
    return z.contiguous(memory_format=torch.channels_last) if z.ndim == 4 else z


def _autocast(device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
