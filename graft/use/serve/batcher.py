"""Micro-batching: crops from concurrent requests share one forward pass.

One forward pass of several photos costs less per photo than passes of one (per-layer overheads
and thread hand-offs are paid once per pass; on a GPU, far less), so requests that arrive within
the window of each other, or while the previous pass runs, share one pass, up to `max_batch`.
The pass runs in one dedicated thread, so the event loop never waits for the model."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from graft.use.predictor import Predictor

log = logging.getLogger("graft")


@dataclass
class _Item:
    crop: np.ndarray  # uint8 (size, size, 3)
    key: dict
    topk: int
    future: asyncio.Future


@dataclass
class BatchStats:
    batches: int = 0
    photos: int = 0
    largest: int = 0
    sizes: Counter = field(default_factory=Counter)
    forward_s: float = 0.0  # time in forward passes (the inference thread busy)

    def to_json(self) -> dict:
        return {"batches": self.batches, "photos": self.photos, "largest_batch": self.largest,
                "batch_sizes": {str(k): v for k, v in sorted(self.sizes.items())},
                "forward_s": round(self.forward_s, 4)}

    def record(self, size: int, seconds: float) -> None:
        self.forward_s += seconds
        self.batches, self.photos, self.largest = self.batches + 1, self.photos + size, max(self.largest, size)
        self.sizes[size] += 1


class Batcher:
    """Collects prepared crops from concurrent requests and runs them through one forward pass.

    The first waiting crop opens a window of `window_s`; whatever arrives in it (and whatever
    queued while the previous pass ran) joins, up to `max_batch`. `max_batch=1` serves one photo
    per pass (the baseline bench/serve_load.py compares with)."""

    def __init__(self, predictor: Predictor, *, window_s: float, max_batch: int, calibration=None,
                 plain: bool = True):
        self.predictor = predictor
        self.window_s = max(0.0, float(window_s))
        self.max_batch = max(1, int(max_batch))
        self.calibration, self.plain = calibration, plain
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="graft-forward")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="graft-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    async def predict(self, crop: np.ndarray, key: dict, topk: int) -> dict:
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put(_Item(crop, key, topk, fut))
        return await fut

    async def _collect(self) -> list[_Item]:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.window_s
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:
                break
        return [it for it in batch if not it.future.done()]  # a client that left is not waited for

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._forward, batch)
            except Exception as e:  # a bug, not bad input: every waiting request hears of it
                log.exception("forward pass failed")
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(e)
                continue
            self.stats.record(len(batch), time.perf_counter() - t0)
            for it, r in zip(batch, results):
                if not it.future.done():
                    it.future.set_result(r)

    def _forward(self, batch: list[_Item]) -> list[dict]:
        p = self.predictor
        logits, novelty = p.forward(np.stack([it.crop for it in batch]))
        return p.answers([it.key for it in batch], logits, novelty, [it.topk for it in batch],
                         self.calibration, self.plain)
