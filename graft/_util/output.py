"""What an output path given by the user may be: the one check before graft writes a file outside
its cache and its run folders (an export, a predictions CSV, a preview picture).

graft replaces only what it can prove it made. A device node, a FIFO, a socket or a folder is
never an output (the atomic rename would put a regular file in its place: as root, `--out
/dev/full` replaced the machine's /dev/full); nor an input of the same command (the photos, the
run), nor an existing file whose maker graft cannot prove (`is_ours`). A missing folder is not
created: a typo in a path is one line, not a tree of new folders. A symlink to a regular file is
written through (graft._util.atomic.atomic_path), the link kept.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from graft.errors import GraftError

_KINDS = {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFIFO: "a FIFO",
          stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}


def not_regular(path) -> str | None:
    """What `path` is when it exists and is not a regular file (links followed), else None: the
    reason no writer of graft's may replace it."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):  # nothing there (or a file above: the write says so)
        return "a link to nothing" if os.path.islink(path) else None
    except OSError as e:
        return f"not readable ({e.strerror or e})"
    if stat.S_ISREG(st.st_mode):
        return None
    return _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")


def check_output(target, flag: str, *, inputs=(), is_ours=None) -> Path:
    """Refuse in one GraftError, before any work, an output `target` (given as `flag`) that is not a
    regular file or a link to one, is in a folder that does not exist, is one of `inputs` or inside
    one of them (files or folders the command reads), or exists and `is_ours(real path)` cannot say
    graft made it. Returns the path, `~` expanded."""
    target = Path(target).expanduser()
    shown = f"{flag} {target}"
    parent = target.parent
    if not parent.is_dir():
        what = "is a file, not a folder" if parent.exists() else "does not exist"
        raise GraftError(f"{shown}: the folder {parent} {what}; graft creates no folders for an output: "
                         f"create it first or give another path")
    kind = not_regular(target)
    if kind is not None:
        raise GraftError(f"{shown} is {kind}, not a regular file: graft replaces only files it wrote; "
                         f"give a file path")
    real = Path(os.path.realpath(target))
    for given in inputs:
        given_real = Path(os.path.realpath(Path(given).expanduser()))
        if real == given_real or given_real in real.parents or _same_file(real, given_real):
            where = "is" if real == given_real or _same_file(real, given_real) else "is inside"
            raise GraftError(f"{shown} {where} {given}, which this command reads: give an output path "
                             f"outside what it reads")
    if real.exists() and not (is_ours is not None and is_ours(real)):
        raise GraftError(f"{shown} exists and graft cannot tell it wrote it: it replaces only its own "
                         f"outputs; move it away or give another path")
    return target


def read_head(path, size: int = 65536) -> bytes:
    """The first `size` bytes of a regular file (b"" for anything else): enough to recognise a file
    graft wrote without reading a large one whole."""
    if not_regular(path) is not None:
        return b""
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError:
        return b""


def _same_file(a: Path, b: Path) -> bool:
    """Two names of one file (a hard link)."""
    try:
        return a.is_file() and b.is_file() and os.path.samefile(a, b)
    except OSError:
        return False


# --- text for people: one name, one line -------------------------------------------------------------

def one_line(text: str) -> str:
    """`text` with control characters escaped as Python writes them (a file name holding a newline
    becomes `a\\nb.jpg`, an undecodable byte `\\udcff`), so that one message, or one file, is one
    line of the output. Here, below every layer that prints or writes names (graft.cli, graft.check)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def tolerant_std_streams() -> None:
    """stdout and stderr write what their encoding cannot hold (a file name's undecodable bytes,
    which Python hands over as lone surrogates) escaped as Python spells them (`\\udcff`), instead
    of raising UnicodeEncodeError halfway through a command's output: for the CLI to call once."""
    import sys

    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError, AttributeError):  # a stream replaced by something else
                pass
