"""Atomic file writes: write a temp file beside the target, fsync, then rename over it; and
reading back the JSON files graft writes, with one-line errors.

A run killed at any moment therefore leaves either the old file or the new one, never half of
one, and temp files (`.tmp-*`) are never read by graft. This is also graft's one error path for
writes: whatever the writer inside `atomic_path` is (Python, safetensors, torch.save), a failure to
write (disk full, a file size limit, no permission, a read-only disk, a folder that is a file)
becomes one GraftError that names the file and says what to do, the temp file is removed and the
previous file stays in place.
"""

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import tempfile
from pathlib import Path

from graft._util import limits
from graft._util.files import read_regular
from graft.errors import GraftError

_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open() would give: a run's files are as readable as any other

_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}
# torch's C++ writer reports a failed write without errno (e.g. "unexpected pos 704 vs 598")
_TORCH_WRITE = re.compile(r"inline_container|PytorchStreamWriter|file write failed|unexpected pos", re.I)


@contextlib.contextmanager
def atomic_path(target):
    """Yield a temp path in the target's folder; on success it is renamed onto `target`."""
    target = _written_through(Path(target))
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=target.suffix, dir=target.parent)
        os.close(fd)
    except OSError as e:
        if tmp is not None:
            _unlink(tmp)
        raise write_error(target, e) from e
    try:
        yield Path(tmp)
        # after the writer: mkstemp makes 0600, and some writers (safetensors) replace the file
        # with one of their own, 0600 too
        os.chmod(tmp, FILE_MODE)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        _unlink(tmp)
        if is_write_failure(e):
            raise write_error(target, e) from e
        raise


def _written_through(target: Path) -> Path:
    """The file a write to `target` replaces: a link's regular target (the link stays a link), or
    `target`. A device node, FIFO, socket or folder there, or a link to nothing, is refused: the
    rename would put a regular file in its place."""
    from graft._util.output import not_regular

    kind = not_regular(target)
    if kind is not None:
        raise GraftError(f"could not write {target}: it is {kind}, not a regular file; graft replaces only "
                         f"files it wrote: give another path")
    return Path(os.path.realpath(target)) if target.is_symlink() else target


def is_write_failure(e: BaseException) -> bool:
    """An expected failure to write a file (not a bug): OSError, safetensors' SafetensorError,
    torch's RuntimeError from its file writer."""
    if isinstance(e, OSError):
        return True
    if type(e).__name__ == "SafetensorError":  # also raised for bad input (a bug): only I/O counts
        return bool(re.search(r"I/O error|os error", str(e)))
    return isinstance(e, RuntimeError) and bool(_TORCH_WRITE.search(str(e)))


def write_error(target, e: BaseException) -> GraftError:
    """One line: which file could not be written, why, and what to do."""
    target = Path(target)
    code = getattr(e, "errno", None)
    if code is None:  # SafetensorError / RuntimeError: "... (os error 28)", or nothing
        m = re.search(r"os error (\d+)", str(e))
        code = int(m.group(1)) if m else None
    if isinstance(e, OSError) and e.strerror:
        why = e.strerror
    else:
        why = " ".join(str(e).split()) or type(e).__name__
        if isinstance(e, RuntimeError):  # "[enforce fail at inline_container.cc:672] . unexpected pos ..."
            why = "torch's writer failed (" + re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", why) + ")"
    folder = _existing_parent(target)
    if code is None and (_nearly_full(folder) or _file_size_limited()):
        code = errno.ENOSPC  # torch's writer says no more than "unexpected pos": the likely reason
    if code in _FULL:
        todo = f"the disk (or a size limit) is full: free space on {folder} or write elsewhere, then run again"
    elif code in _DENIED:
        todo = f"no permission to write in {folder}: make it writable or write elsewhere"
    elif code in (errno.ENOTDIR, errno.EEXIST):
        todo = f"a part of {target.parent} is a file, not a folder: choose another path"
    elif code is None:
        todo = f"the disk may be full or failing: check {folder}, or write elsewhere"
    else:
        todo = f"check {folder}, or write elsewhere"
    return GraftError(f"could not write {target}: {why}; {todo}")


def write_bytes(target, data: bytes) -> str:
    """Write `data` atomically; -> its SHA-256 (hex), what a run records of the files it holds."""
    with atomic_path(target) as tmp:
        Path(tmp).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


# Text graft writes (JSON, CSV, HTML) is UTF-8 a reader can always decode. A file name that is not
# valid UTF-8 reaches Python as lone surrogates (surrogateescape): written strictly it raised
# UnicodeEncodeError halfway through a report or a CSV; it is written as Python spells it instead
# (`\udcff`, as graft.cli.one_line prints it), the rest of the text unchanged.
TEXT_ERRORS = "backslashreplace"


def write_text(target, text: str) -> None:
    """`text` as UTF-8, atomically; characters UTF-8 cannot hold (TEXT_ERRORS) escaped."""
    write_bytes(target, text.encode("utf-8", TEXT_ERRORS))


@contextlib.contextmanager
def atomic_text(target, newline: str | None = None):
    """A text file (UTF-8, TEXT_ERRORS) that replaces `target` atomically when the block ends:
    for text written as it comes (a CSV row by row)."""
    with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8", errors=TEXT_ERRORS, newline=newline) as f:
        yield f


def write_safetensors(target, tensors: dict, metadata: dict | None = None) -> str:
    """torch or numpy tensors as a safetensors file, atomically. Serialised in memory and written
    here rather than by safetensors' save_file, which makes a temp file of its own beside the
    target (".tmpXXXXXX", Rust's tempfile crate): a run killed during that write left one in the
    run folder, a name graft does not make, so `--resume` refused the folder as not graft's."""
    first = next(iter(tensors.values()), None)
    if type(first).__module__ == "numpy":  # (numpy is not imported here: the CLI's fast start)
        from safetensors.numpy import save
    else:
        from safetensors.torch import save
    return write_bytes(target, save(tensors, metadata=metadata))


def json_safe(obj):
    """`obj` with every NaN or infinity replaced by None: JSON has no such numbers (Python's json
    writes `NaN`, which other readers reject), and a missing figure is null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json(target, obj) -> None:
    """Strict JSON (no NaN/Infinity: those become null), written atomically."""
    text = json.dumps(json_safe(obj), indent=2, sort_keys=False, allow_nan=False)
    write_bytes(target, (text + "\n").encode())  # json.dumps escapes every non-ASCII character


def _existing_parent(path: Path) -> Path:
    p = path.parent
    while not p.is_dir() and p != p.parent:
        p = p.parent
    return p


def _file_size_limited() -> bool:
    """A file size limit (`ulimit -f`) is set: writes past it fail (EFBIG)."""
    try:
        import resource

        return resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY
    except (ImportError, OSError, ValueError):
        return False


def _nearly_full(folder: Path) -> bool:
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (1 << 20)


def read_json(path, *, missing: str):
    """The JSON in `path`; GraftError(`missing`) when there is no such file, or one naming the
    file when it cannot be read or parsed. Only a regular file is read (a FIFO or /dev/zero
    under a run's file name would block or never end), within graft._util.limits' bounds."""
    path = Path(path)
    try:
        return limits.loads(read_regular(path, max_bytes=limits.MAX_JSON_BYTES).decode("utf-8"))
    except FileNotFoundError:
        raise GraftError(missing) from None
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else " ".join(str(e).split())
        raise GraftError(f"cannot read {path}: {why}") from None


def _unlink(path) -> None:
    if path is None:
        return
    with contextlib.suppress(OSError):
        os.unlink(path)
