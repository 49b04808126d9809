"""Running under torchrun: one process per GPU (or CPU slot), coordinated by torch.distributed.

graft does not schedule anything itself: `torchrun --nproc-per-node N -m graft train ...` (and
torchrun's rendezvous across machines) starts the processes and sets RANK / WORLD_SIZE; this
module joins them into a process group (NCCL on GPUs, gloo on CPUs) and offers the few
collective steps graft needs. Outside torchrun everything here is a no-op for one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1  # processes on this machine (world / nodes under `torchrun --nnodes`)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def cpu_threads(self) -> int:
        """This process's share of this machine's cores (not of all nodes' processes)."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, cores // max(1, self.local_world))

    def shard(self, items: list) -> list:
        """This rank's share of `items` (every world-th item, starting at its rank)."""
        return items[self.rank :: self.world] if self.enabled else items

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def gather_lists(self, items: list) -> list:
        """Concatenate a list from every rank (small, picklable items), in rank order."""
        if not self.enabled:
            return list(items)
        out: list = [None] * self.world
        dist.all_gather_object(out, list(items))
        return [x for part in out for x in part]

    def sum(self, *values: float) -> list[float]:
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()


_context: Context | None = None


def context() -> Context:
    """The process group of this run, initialised once from torchrun's environment."""
    global _context
    if _context is not None:
        return _context
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _context = Context()
        return _context
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    _context = Context(rank, world, local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    return _context


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
