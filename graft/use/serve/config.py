"""The server's settings, and sizes as people type them (`--max-upload 20MB`) and read them."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from graft._util.sizes import parse_size
from graft.errors import GraftError

DEFAULT_MAX_UPLOAD = 20 * 1024 * 1024
MAX_UPLOAD_LIMIT = 1 << 30  # a body is held in memory while it is judged: above 1 GB is a mistake
MAX_FILES = 64  # photos in one multipart request
# Pixels (width x height, read from each photo's header before any is decoded): a 12-megapixel
# phone photo decodes to 36 MB and a 64-megapixel PNG to 192 MB, held while it is resized, so
# pixels, not bytes, are what a request costs (a 200 KB PNG of 8000x7999 took a second of CPU).
DEFAULT_MAX_PIXELS = 100_000_000  # one request: eight phone photos
DEFAULT_PIXEL_RATE = 100_000_000  # every request together, per second (a burst of 2 s is allowed)
# Decoding threads: each holds a whole decoded photo, so peak memory grows with them, while the
# forward pass (one thread) is what limits throughput; two keep it fed (bench/serve_load.py).
DEFAULT_DECODERS = 2


@dataclass
class ServeConfig:
    max_upload: int = DEFAULT_MAX_UPLOAD
    batch_window_ms: float = 5.0
    max_batch: int = 16
    reject: object = None  # as --reject; None: "auto" when the run is calibrated, else "none"
    decoders: int = 0  # threads decoding uploads at once (0: DEFAULT_DECODERS, at most one per core)
    max_pixels: int = DEFAULT_MAX_PIXELS  # per request, from the headers, before decoding
    pixel_rate: float = DEFAULT_PIXEL_RATE  # per second, every request together
    host: str = "127.0.0.1"  # the bound address: a Host header the server answers to
    allow_hosts: tuple = ()  # more Host names (a DNS name others reach it by; "*": any)
    allow_origins: tuple = ()  # more Origins a browser page may POST from ("*": any)
    header_timeout_s: float = 10.0  # a request's headers must be in within this (slowloris)
    body_timeout_s: float = 60.0  # and its body within this, once it is read

    def decoder_threads(self) -> int:
        return self.decoders or max(1, min(DEFAULT_DECODERS, len(os.sched_getaffinity(0))))


def cli_config(args) -> ServeConfig:
    """The `graft serve` options as a ServeConfig (each number already checked as it was parsed:
    graft.cli.serve); a bad value stops the start in one line."""
    if args.threads is not None and args.threads < 1:
        raise GraftError(f"--threads must be at least 1, got {args.threads}")
    if args.max_batch < 1:
        raise GraftError(f"--max-batch must be at least 1, got {args.max_batch}")
    if not (math.isfinite(args.batch_window_ms) and args.batch_window_ms >= 0):
        raise GraftError(f"--batch-window-ms must be a finite number >= 0, got {args.batch_window_ms}")
    max_upload = args.max_upload if isinstance(args.max_upload, int) else parse_max_upload(args.max_upload)
    return ServeConfig(max_upload=max_upload, batch_window_ms=args.batch_window_ms, max_batch=args.max_batch,
                       reject=args.reject, decoders=args.decoders or 0,
                       max_pixels=round(args.max_megapixels * 1e6), pixel_rate=args.megapixels_per_s * 1e6,
                       host=args.host, allow_hosts=tuple(args.allow_host or ()),
                       allow_origins=tuple(args.allow_origin or ()), header_timeout_s=args.header_timeout,
                       body_timeout_s=args.body_timeout)


def parse_max_upload(text: str) -> int:
    """--max-upload: "20MB", "512KB", "1.5GB" or a number of bytes (graft._util.sizes), above 0
    and at most 1 GB."""
    n = parse_size(text, "--max-upload")
    if not 0 < n <= MAX_UPLOAD_LIMIT:
        raise GraftError(f"--max-upload must be above 0 and at most 1 GB, got {text!r}")
    return n


def size_text(n: int) -> str:
    """Bytes as the 413 message says them: 1 MB, 64 KB, 1.5 GB."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:g} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
