"""What happens around fine-tuning's epochs, one idea a callback: the per-epoch log row and
progress bar (EpochLog), early stopping with the best epoch kept (EarlyStop), the checkpoint
written after every epoch and read back by `resume` (Checkpoint), and Ctrl-C (Interrupt).

The trainer (graft.finetune.loop.Trainer) calls every callback's method of a point's name at that
point, in the order they are given; `Callback` lists the points.
"""

from __future__ import annotations

import logging
import signal
import threading

import torch
from tqdm.auto import tqdm

from graft._util.atomic import atomic_path
from graft.errors import GraftError
from graft.heads.early_stopping import EarlyStopping

log = logging.getLogger("graft")


class Callback:
    """The points of a run, in order; each does nothing here. `trainer` is the running
    graft.finetune.loop.Trainer: its `state` (what a checkpoint holds), `best_state`, `stop`."""

    def before_fit(self, trainer) -> None:
        """Before the first epoch (and after the network, its inputs and optimiser are built)."""

    def before_epoch(self, trainer) -> None:
        """An epoch starts (or a resumed one goes on from `state["step"]`)."""

    def after_batch(self, trainer) -> None:
        """A training step is done."""

    def after_train(self, trainer) -> None:
        """The epoch's training steps are done."""

    def after_validate(self, trainer) -> None:
        """The epoch's row is in `state["history"]`; setting `trainer.stop` ends training after it."""

    def after_epoch(self, trainer) -> None:
        """`state` has moved on to the next epoch (or to the end, when stopping)."""

    def after_fit(self, trainer) -> None:
        """The last epoch is done: the result is about to be built."""

    def on_exit(self, trainer) -> None:
        """Always, last: after the fit, or as an error (Ctrl-C included) leaves it."""


class EpochLog(Callback):
    """The progress bar of each epoch's steps, its log line, and `on_epoch(epoch, scalars)` (see
    graft.finetune.loop.finetune) as it ends, so a log of the run grows while it runs."""

    def __init__(self, progress: bool = True, on_epoch=None):
        self.progress, self.on_epoch = progress, on_epoch
        self.bar = None
        self.at_start: dict = {}

    def before_epoch(self, trainer) -> None:
        self.at_start = dict(trainer.timings)
        self.bar = tqdm(total=trainer.steps_per_epoch, initial=trainer.state["step"],
                        desc=f"epoch {trainer.state['epoch'] + 1}/{trainer.cfg.epochs}", unit="step",
                        disable=not self.progress, leave=False)

    def after_batch(self, trainer) -> None:
        self.bar.update(1)

    def after_train(self, trainer) -> None:
        self._close()

    def after_validate(self, trainer) -> None:
        h, epoch, epochs = trainer.state["history"], trainer.state["epoch"], trainer.cfg.epochs
        if self.progress and h["val_loss"][-1] is None:
            log.info("epoch %d/%d: train loss %.4f (no validation photo)", epoch + 1, epochs, h["train_loss"][-1])
        elif self.progress:
            log.info("epoch %d/%d: train loss %.4f, val loss %.4f, val accuracy %.4f", epoch + 1, epochs,
                     h["train_loss"][-1], h["val_loss"][-1], h["val_accuracy"][-1])
        if self.on_epoch is not None:
            self.on_epoch(epoch + 1, epoch_scalars(h, trainer.timings, self.at_start, trainer.opt))

    def on_exit(self, trainer) -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def epoch_scalars(h: dict, timings: dict, at_start: dict, opt) -> dict:
    """One epoch's row of the training log: its losses, accuracy, learning rates at its end,
    and its share of the timings (the trainer's waits for data against its computing)."""
    spent = {k: timings[k] - at_start[k] for k in ("data_wait_s", "step_s", "val_s")}
    busy = spent["data_wait_s"] + spent["step_s"]
    groups = opt.param_groups
    return {"train_loss": h["train_loss"][-1], "val_loss": h["val_loss"][-1], "val_accuracy": h["val_accuracy"][-1],
            "lr": groups[0]["lr"], "lr_backbone": groups[1]["lr"] if len(groups) > 1 else None,
            "epoch_s": h["epoch_s"][-1], **spent, "data_wait_share": spent["data_wait_s"] / busy if busy else None}


class EarlyStop(Callback):
    """Early stopping on the validation loss (graft.heads.early_stopping, the head's rule), the best
    epoch's weights kept and restored at the end. Its record lives in the trainer's `state`
    (best_loss, best_epoch) and `best_state`, so a checkpoint carries it."""

    def after_validate(self, trainer) -> None:
        state = trainer.state
        val_loss = state["history"]["val_loss"][-1]
        stopping = EarlyStopping(trainer.cfg.patience, state["best_loss"], state["best_epoch"])
        if stopping.update(state["epoch"], val_loss):
            # no validation photo: the last epoch is the result, the weights as they end
            trainer.best_state = None if val_loss is None else {
                k: v.detach().clone() for k, v in trainer.net.state_dict().items()}
        state.update(best_loss=stopping.best_loss, best_epoch=stopping.best_epoch)
        trainer.stop = stopping.should_stop(state["epoch"])

    def after_fit(self, trainer) -> None:
        if trainer.best_state is not None:
            trainer.net.load_state_dict(trainer.best_state)


class Checkpoint(Callback):
    """The model, optimiser, scheduler, RNG state and position, written atomically (by the first
    process) after every epoch at `path`; with `resume`, read back before the first epoch so the
    run ends with the weights of an uninterrupted one."""

    def __init__(self, path, *, resume: bool = False):
        self.path, self.resume = path, resume

    def before_fit(self, trainer) -> None:
        if not self.resume:
            return
        if not self.path.is_file():
            # killed before its first checkpoint (e.g. during feature extraction, which resumes from
            # the cache by itself): there is nothing to restore, so this is simply the first run
            log.warning("--resume: no checkpoint in %s yet; training from the start", self.path.parent)
            return
        ck = load_checkpoint(self.path, trainer.cfg)
        trainer.net.load_state_dict(ck["model"])
        trainer.opt.load_state_dict(ck["optimizer"])
        trainer.sched.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["rng"])
        trainer.best_state = ck.get("best_model")
        state = trainer.state
        state.update(ck["state"])
        if ck.get("world", 1) != trainer.dist.world:  # another process count: restart the epoch, re-time the LR
            state.update(step=0, loss_sum=0.0, seen=0)
            trainer.schedule_from_epoch(state["epoch"])
        trainer.resumed_from = state["epoch"]
        log.info("resuming at %s of %s", position(state), self.path)

    def after_epoch(self, trainer) -> None:
        if trainer.dist.is_main:
            self.save(trainer)

    def save(self, trainer) -> None:
        save_checkpoint(self.path, trainer.net, trainer.opt, trainer.sched, trainer.state, trainer.best_state,
                        trainer.cfg, trainer.dist.world)


class Interrupt(Callback):
    """Ctrl-C finishes the current step, saves a checkpoint at it and stops with a GraftError that
    says how to resume; a second Ctrl-C aborts at once. Only the main thread can take signals."""

    def __init__(self, checkpoint: Checkpoint):
        self.checkpoint = checkpoint
        self.asked = False
        self.old_handler = None

    def before_fit(self, trainer) -> None:
        if threading.current_thread() is threading.main_thread():
            self.old_handler = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum, frame) -> None:
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True
        log.warning("interrupt: finishing this step and saving a checkpoint (Ctrl-C again to abort)")

    def after_batch(self, trainer) -> None:
        if not self.asked:
            return
        if trainer.dist.is_main:
            self.checkpoint.save(trainer)
        raise GraftError(f"interrupted at {position(trainer.state)}; saved {self.checkpoint.path}. Resume with "
                         f"the same command and --resume")

    def on_exit(self, trainer) -> None:
        if self.old_handler is not None:
            signal.signal(signal.SIGINT, self.old_handler)


def position(state: dict) -> str:
    """Where training stands, as both the interrupt and the resume say it: "epoch 3, after step 1"
    (epochs counted from 1, as the progress bar does; steps done in that epoch). They used to
    disagree: "interrupted at epoch 3, step 1", then "resuming from epoch 2, step 1" (issue 22)."""
    return f"epoch {state['epoch'] + 1}, after step {state['step']}"


def save_checkpoint(path, net, opt, sched, state, best_state, cfg, world: int = 1) -> None:
    payload = {"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
               "rng": torch.get_rng_state(), "state": state, "best_model": best_state, "config": cfg.to_json(),
               "world": world}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path, cfg) -> dict:
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
