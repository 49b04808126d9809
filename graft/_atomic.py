"""Atomic file writes: write a temp file beside the target, fsync, then rename over it; and
reading back the JSON files graft writes, with one-line errors.

A run killed at any moment therefore leaves either the old file or the new one, never half of
one, and temp files (`.tmp-*`) are never read by graft. A failed write (disk full) raises a
GraftError naming the file and leaves the previous file in place.
"""

import contextlib
import json
import os
import tempfile
from pathlib import Path

from .errors import GraftError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(target):
    """Yield a temp path in the target's folder; on success it is renamed onto `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a run's files are as readable as any other
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:
        _unlink(tmp)
        raise GraftError(f"could not write {target}: {e.strerror or e}") from e
    except BaseException:
        _unlink(tmp)
        raise


def write_bytes(target, data: bytes) -> None:
    with atomic_path(target) as tmp:
        Path(tmp).write_bytes(data)


def write_json(target, obj) -> None:
    write_bytes(target, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path, *, missing: str):
    """The JSON in `path`; GraftError(`missing`) when there is no such file, or one naming the
    file when it cannot be read or parsed."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise GraftError(missing) from None
    except (OSError, ValueError) as e:
        raise GraftError(f"cannot read {path}: {e}") from None


def _unlink(path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
