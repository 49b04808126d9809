"""Sizes as people type them on a command line ("20MB", "500M", "1.5g", "3GiB", "1024"): one
parser for every option that takes one (`graft serve --max-upload`, `graft cache prune --max-size`)."""

import re

from graft.errors import GraftError

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])i?)?b?\s*")


def parse_size(text, what: str = "a size") -> int:
    """Bytes from "500M", "20MB", "1.5g", "3GiB" or "1024" (units of 1024); one GraftError naming
    `what` for anything else (a sign, an exponent, an unknown unit: no overflow, no negative)."""
    m = _SIZE.fullmatch(str(text).lower())
    if not m:
        raise GraftError(f"{what} takes a size like 500M, 20MB or 2G, got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2) or ""])
