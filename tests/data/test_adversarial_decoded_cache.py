"""Decoded-photo cache entries damaged on disk, replaced by something else, or on a full disk
(issue 14): a decode again costs time, never a wrong photo or the run."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graft.cache.layout import MARKER as CACHE_MARKER
from graft.data.decoded import DecodedCache
from graft.data.images import read_image

from conftest import make_photo, make_special, run_with_timeout


def _damage(entry: Path, how: str) -> None:
    data = bytearray(entry.read_bytes())
    header = data.index(b"\n") + 1  # the .npy header ends with a newline
    if how == "pixels-zeroed":  # the case: header and size kept
        data[header:-32] = bytes(len(data) - header - 32)
    elif how == "one-bit-flipped":
        data[header + 5] ^= 0x10
    elif how == "checksum-zeroed":
        data[-32:] = bytes(32)
    elif how == "truncated":
        del data[-1:]
    elif how == "extended":
        data += b"\0"
    elif how == "header-garbage":
        data[:header] = b"x" * header
    elif how == "shape-changed":  # same bytes, another shape: the header still parses
        text = data[:header].decode("latin1")
        h, w = (int(v) for v in text[text.index("(") + 1:text.index(")")].split(",")[:2])
        new = text.replace(f"({h}, {w}, 3)", f"({w}, {h}, 3)")
        data[:header] = new.encode("latin1")
    else:
        raise ValueError(how)
    entry.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["pixels-zeroed", "one-bit-flipped", "checksum-zeroed", "truncated", "extended",
                                 "header-garbage", "shape-changed"])
def test_a_damaged_decoded_photo_is_discarded_with_one_warning_and_decoded_again(tmp_path, caplog, how):
    photo = tmp_path / "p.png"
    make_photo(np.random.default_rng(5), "blue", size=(40, 30)).save(photo)
    expected = np.asarray(read_image(photo))
    DecodedCache(tmp_path / "dc").load(photo, "ab" * 32, (40, 30), 1)  # decodes and stores
    (entry,) = (tmp_path / "dc").rglob("*.npy")
    _damage(entry, how)
    with caplog.at_level(logging.WARNING, logger="graft"):
        got = DecodedCache(tmp_path / "dc").load(photo, "ab" * 32, (40, 30), 1)
        again = DecodedCache(tmp_path / "dc").load(photo, "ab" * 32, (40, 30), 1)  # the rewritten entry
    assert np.array_equal(got, expected) and np.array_equal(again, expected)
    warnings = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(warnings) == 1 and str(entry) in warnings[0], caplog.text
    assert np.array_equal(np.load(entry), expected)  # a standard .npy again, with the right pixels


@pytest.mark.parametrize("kind", ["fifo", "symlink-to-dev-zero", "folder"])
def test_something_else_at_a_decoded_entry_path_is_neither_read_nor_replaced(tmp_path, kind):
    photo = tmp_path / "p.png"
    make_photo(np.random.default_rng(5), "blue", size=(40, 30)).save(photo)
    cache = DecodedCache(tmp_path / "dc")
    cache.load(photo, "cd" * 32, (40, 30), 1)
    (entry,) = (tmp_path / "dc").rglob("*.npy")
    entry.unlink()
    make_special(kind, entry, tmp_path)
    got = run_with_timeout(lambda: DecodedCache(tmp_path / "dc").load(photo, "cd" * 32, (40, 30), 1), tmp_path,
                           timeout=30)
    assert np.array_equal(got, np.asarray(read_image(photo)))
    assert not stat.S_ISREG(os.lstat(entry).st_mode)  # left as it was


def test_a_decoded_photo_is_fsynced_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(("fsync", os.fstat(fd).st_size)) or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: calls.append(("replace", Path(b).name)) or real_replace(a, b))
    photo = tmp_path / "p.png"
    Image.new("RGB", (12, 9), (10, 20, 30)).save(photo)
    DecodedCache(tmp_path / "dc").load(photo, "ef" * 32, (12, 9), 1)
    (entry,) = (tmp_path / "dc").rglob("*.npy")
    assert calls == [("fsync", entry.stat().st_size), ("replace", entry.name)]


def test_a_full_disk_under_the_decoded_photo_cache_costs_a_decode_not_the_run(tiny_tmpfs):
    photo = tiny_tmpfs.parent / "p.png"
    Image.new("RGB", (200, 150), (1, 2, 3)).save(photo)  # 90 KB decoded: does not fit
    arr = DecodedCache(tiny_tmpfs / "dc").load(photo, "12" * 32, (200, 150), 1)
    left = [p for p in (tiny_tmpfs / "dc").rglob("*") if p.is_file() and p.name != CACHE_MARKER]
    assert arr.shape == (150, 200, 3) and not left, left  # the folder's graft marker aside


def test_the_decoded_photo_cache_marks_its_folder(tmp_path):
    from graft._util.digest import sha256_file
    from graft.cache.layout import DECODED, marked

    photo = tmp_path / "p.jpg"
    make_photo(np.random.default_rng(0), "blue", (40, 30)).save(photo)
    DecodedCache(tmp_path / "decoded").load(photo, sha256_file(photo), (40, 30), 1)
    assert marked(tmp_path / "decoded", DECODED)
