"""The server's settings, and sizes as people type them (`--max-upload 20MB`) and read them."""

from __future__ import annotations

from dataclasses import dataclass

from graft._util.sizes import parse_size
from graft.errors import GraftError

DEFAULT_MAX_UPLOAD = 20 * 1024 * 1024
MAX_FILES = 64  # photos in one multipart request


@dataclass
class ServeConfig:
    max_upload: int = DEFAULT_MAX_UPLOAD
    batch_window_ms: float = 5.0
    max_batch: int = 16
    reject: object = None  # as --reject; None: "auto" when the run is calibrated, else "none"
    decoders: int = 0  # threads decoding uploads at once (0: one per core)


def cli_config(args) -> ServeConfig:
    """The `graft serve` options as a ServeConfig; a bad value stops the start in one line."""
    if args.threads is not None and args.threads < 1:
        raise GraftError(f"--threads must be at least 1, got {args.threads}")
    if args.max_batch < 1:
        raise GraftError(f"--max-batch must be at least 1, got {args.max_batch}")
    if args.batch_window_ms < 0:
        raise GraftError(f"--batch-window-ms must be >= 0, got {args.batch_window_ms}")
    return ServeConfig(max_upload=parse_max_upload(args.max_upload), batch_window_ms=args.batch_window_ms,
                       max_batch=args.max_batch, reject=args.reject)


def parse_max_upload(text: str) -> int:
    """--max-upload: "20MB", "512KB", "1.5GB" or a number of bytes (graft._util.sizes), above 0."""
    n = parse_size(text, "--max-upload")
    if n <= 0:
        raise GraftError(f"--max-upload must be positive, got {text!r}")
    return n


def size_text(n: int) -> str:
    """Bytes as the 413 message says them: 1 MB, 64 KB, 1.5 GB."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:g} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
