"""Open only regular files, without blocking and within a size bound.

Files graft reads that someone else put there (photos, cache entries) may be anything with the
right name: a FIFO named x.jpg blocks a plain open() until a writer comes, a symlink to
/dev/zero named z.jpg reads without end, a socket or a device has no size. So: stat first and
refuse anything but a regular file (symlinks are followed and judged by what they point to);
open with O_NONBLOCK, so a FIFO swapped in after the stat cannot block the open either; fstat
the open descriptor, so what is read is what was checked; refuse a file over `max_bytes`
before reading any of it.
"""

from __future__ import annotations

import errno
import os
import stat

_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


class NotRegularFile(OSError):
    """The path is a FIFO, device, socket or folder (or a symlink to one): graft never reads it."""


class FileTooLarge(OSError):
    """The file is larger than the bound its reader sets."""


def kind_of(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _refuse(path, mode: int) -> NotRegularFile:
    what = kind_of(mode)
    target = ""
    if os.path.islink(path):
        target = f" (a symlink to {os.path.realpath(path)})"
    return NotRegularFile(errno.EINVAL, f"not a regular file but {what}{target}; graft reads only "
                                        f"regular files", str(path))


def check_size(path, size: int, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise FileTooLarge(errno.EFBIG, f"{_mb(size)} is over the {_mb(max_bytes)} limit for this kind "
                                        f"of file", str(path))


def _mb(n: int) -> str:
    return f"{n / 2**20:.3g} MB"  # MB of 2**20 bytes, as the limits are set


def open_regular(path, *, max_bytes: int | None = None):
    """A binary file object for `path`, a regular file of at most `max_bytes` bytes.

    Raises NotRegularFile, FileTooLarge, or the OSError of stat/open (missing, no permission).
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise _refuse(path, mode)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # replaced between the stat and the open
            raise _refuse(path, st.st_mode)
        check_size(path, st.st_size, max_bytes)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path, *, max_bytes: int) -> bytes:
    """All bytes of a regular file of at most `max_bytes` (a file growing past it is refused too)."""
    with open_regular(path, max_bytes=max_bytes) as f:
        data = f.read(max_bytes + 1)
    check_size(path, len(data), max_bytes)
    return data
