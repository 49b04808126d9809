"""Pixels per second, every request together: a token bucket.

The decoding threads are few (graft.use.serve.config), so work beyond them waits in line, and a
line of 64-megapixel photos is minutes long: a client waiting behind it times out, and the
memory of every request in the line is held. The bucket admits a request's pixels when there are
enough (it refills at `rate` pixels a second, up to `burst_s` seconds' worth) and otherwise
answers at once with the seconds to wait (503 and Retry-After), so the line stays short and every
admitted request is answered in seconds."""

from __future__ import annotations

import math
import time


class PixelBudget:
    def __init__(self, rate: float, *, burst_s: float = 2.0, least: float = 0.0, clock=time.monotonic):
        self.rate = float(rate)
        self.capacity = max(self.rate * burst_s, float(least))  # one request of the most pixels fits
        self.level = self.capacity
        self.clock = clock
        self.at = clock()

    def take(self, pixels: int) -> float:
        """0 when `pixels` are admitted (and taken), else the seconds until they would be."""
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now
        if pixels <= self.level:
            self.level -= pixels
            return 0.0
        return max(0.001, (pixels - self.level) / self.rate)


def retry_after(seconds: float) -> str:
    """The Retry-After header: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
