"""graft._util.files: only regular files are opened, never blocking, within a size bound, and what
is read is what was checked (a file swapped or grown after the check is refused too)."""

from __future__ import annotations

import os
import stat

import pytest

from graft._util import files
from graft._util.files import FileTooLarge, NotRegularFile, kind_of, open_regular, read_regular


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else set()


def test_a_regular_file_is_read_whole(tmp_path):
    p = tmp_path / "a.bin"
    p.write_bytes(b"x" * 100)
    assert read_regular(p, max_bytes=100) == b"x" * 100  # exactly at the bound: accepted
    with open_regular(p) as f:  # no bound
        assert f.read() == b"x" * 100


@pytest.mark.parametrize("kind, says", [("fifo", "a named pipe (FIFO)"), ("folder", "a folder"),
                                        ("symlink-to-folder", "a folder (a symlink to "),
                                        ("dev-null", "a character device")])
def test_anything_but_a_regular_file_is_refused_naming_what_it_is(tmp_path, kind, says):
    p = tmp_path / "x.jpg"
    if kind == "fifo":
        os.mkfifo(p)  # a plain open() would block here until a writer came
    elif kind == "folder":
        p.mkdir()
    elif kind == "symlink-to-folder":
        (tmp_path / "real").mkdir()
        p.symlink_to(tmp_path / "real")
    else:
        p.symlink_to("/dev/null")
        says = "a character device (a symlink to /dev/null)"
    with pytest.raises(NotRegularFile) as e:
        read_regular(p, max_bytes=10)
    assert f"not a regular file but {says}" in str(e.value) and "graft reads only regular files" in str(e.value)
    assert e.value.filename == str(p)


def test_a_file_over_the_bound_is_refused_before_it_is_read(tmp_path, monkeypatch):
    p = tmp_path / "big.bin"
    with open(p, "wb") as f:
        f.truncate(3 << 20)
    reads = []
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: reads.append(n) or real_read(fd, n))
    before = _open_fds()
    with pytest.raises(FileTooLarge, match=r"3 MB is over the 2 MB limit for this kind of file"):
        open_regular(p, max_bytes=2 << 20)
    assert not reads and _open_fds() == before  # nothing read, the descriptor closed


def test_a_file_that_grows_past_the_bound_while_read_is_refused(tmp_path, monkeypatch):
    p = tmp_path / "growing.log"
    p.write_bytes(b"12345")
    real_open = files.open_regular

    def open_then_grow(path, **kw):
        f = real_open(path, **kw)  # checked at 5 bytes
        with open(path, "ab") as g:
            g.write(b"678")
        return f

    monkeypatch.setattr(files, "open_regular", open_then_grow)
    with pytest.raises(FileTooLarge, match="over the"):
        read_regular(p, max_bytes=6)
    monkeypatch.undo()
    assert read_regular(p, max_bytes=8) == b"12345678"  # the whole file, now that it fits


def test_a_fifo_swapped_in_after_the_stat_is_refused_without_blocking(tmp_path, monkeypatch):
    """The stat saw a regular file; by the open it is a FIFO: the fstat of the open descriptor
    refuses it, and O_NONBLOCK kept the open itself from waiting for a writer."""
    regular, fifo = tmp_path / "photo.jpg", tmp_path / "pipe.jpg"
    regular.write_bytes(b"jpeg")
    os.mkfifo(fifo)
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda path, *a, **k: real_stat(regular if str(path) == str(fifo) else path,
                                                                    *a, **k))
    before = _open_fds()
    with pytest.raises(NotRegularFile, match=r"a named pipe \(FIFO\)"):
        open_regular(fifo)
    assert _open_fds() == before


def test_a_missing_file_raises_its_own_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_regular(tmp_path / "gone.jpg", max_bytes=10)


def test_kind_of_names_every_mode():
    assert kind_of(stat.S_IFSOCK) == "a socket" and kind_of(stat.S_IFBLK) == "a block device"
    assert kind_of(stat.S_IFREG) == "not a regular file"  # only asked about what is refused
