"""Files named like photos that are not regular files (a FIFO named x.jpg, a symlink to /dev/zero, a
socket, a 300 MB sparse file, a folder) through every reader of photos: probe, decode, the evaluation
preprocessing that predict uses, and the folder scan that train uses (issue 14). Readers that could
block or read without end run in a child process with a data limit and a per-case timeout, so a
regression fails its cases instead of hanging the suite."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from graft.data.images import probe_image
from graft.errors import ImageError

from conftest import EXPECTED, SPECIAL, Children, fill_with_specials, make_photo_folder, make_special


CASE_TIMEOUT_S = 10  # a reader that has not answered by then is hanging


# The readers run in a child process: a data limit turns an unbounded read into a MemoryError
# in a second, a thread per case and FIFO unblocking turn a hang into a failed case.
_READERS_CHILD = textwrap.dedent("""
    import json, os, resource, stat, sys, threading, time, traceback
    resource.setrlimit(resource.RLIMIT_DATA, (3 << 30, 3 << 30))
    from pathlib import Path
    from graft.backbones import DEFAULT_PREPROCESSING
    from graft.data import probe_image, read_image, scan_class_folders
    from graft.errors import ImageError

    def unblock(folder):
        for p in Path(folder).rglob("*"):
            try:
                if stat.S_ISFIFO(os.stat(p).st_mode):
                    os.close(os.open(p, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass

    READERS = {
        "probe": lambda p: probe_image(p)[1],
        "read": lambda p: read_image(p).size,
        "read-reduced": lambda p: read_image(p, min_short_side=64).size,
        "preprocess": lambda p: tuple(DEFAULT_PREPROCESSING.load(p).shape),
        "scan": lambda p: scan_class_folders(p)[2],
    }
    spec = json.loads(sys.argv[1])
    out = {}
    for case_id, reader, path in spec["cases"]:
        box = {}
        def run():
            t0 = time.perf_counter()
            try:
                box["result"] = {"ok": True, "value": READERS[reader](path)}
            except ImageError as e:
                box["result"] = {"ok": False, "error": "ImageError", "reason": e.reason}
            except BaseException as e:
                box["result"] = {"ok": False, "error": type(e).__name__, "reason": str(e)[:300],
                                 "traceback": traceback.format_exc()[-800:]}
            box["result"]["seconds"] = round(time.perf_counter() - t0, 3)
        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(spec["timeout"])
        if t.is_alive():
            while t.is_alive():
                unblock(spec["unblock"])
                t.join(0.1)
            box["result"] = {"ok": False, "error": "hang", "reason": f"no answer in {spec['timeout']} s"}
        out[case_id] = box["result"]
    print("RESULTS " + json.dumps(out, default=str))
""")


FILE_READERS = ["probe", "read", "read-reduced", "preprocess"]


@pytest.fixture(scope="module")
def children(tmp_path_factory):
    """Started at once: every special file through every file reader and a class folder holding
    them all through the scan."""
    root = tmp_path_factory.mktemp("special")
    kids = Children(root)
    paths = fill_with_specials(root / "files", root / "outside")
    photos = make_photo_folder(root / "photos", per_class=2)
    fill_with_specials(photos / "red", root / "outside-scan")
    cases = [[f"{reader}:{kind}", reader, str(p)] for kind, p in paths.items() for reader in FILE_READERS]
    cases.append(["scan", "scan", str(photos)])
    spec = json.dumps({"cases": cases, "unblock": str(root), "timeout": CASE_TIMEOUT_S})
    kids.start("readers", [sys.executable, "-c", _READERS_CHILD, spec], timeout=120 + len(cases) * CASE_TIMEOUT_S)
    kids.scan_photos = photos
    try:
        yield kids
    finally:
        kids.close()


@pytest.fixture(scope="module")
def special_results(children):
    return children.results_line("readers"), children.scan_photos


@pytest.mark.parametrize("reader", FILE_READERS)
@pytest.mark.parametrize("kind", SPECIAL)
def test_a_file_that_is_not_a_regular_photo_is_refused_by_every_reader_without_hanging(special_results, reader, kind):
    got = special_results[0][f"{reader}:{kind}"]
    assert got["error"] == "ImageError", got  # not a hang, not a MemoryError, not a traceback
    assert got["reason"].startswith(EXPECTED[kind]), got
    assert got["seconds"] < CASE_TIMEOUT_S


@pytest.mark.parametrize("kind", SPECIAL)
def test_scanning_a_class_folder_skips_a_non_regular_file_with_one_line(special_results, kind):
    got, photos = special_results
    scan = got["scan"]
    assert scan["ok"], scan  # the scan (what train does first) finished: no hang, no MemoryError
    skipped = [s for s in scan["value"] if Path(s["path"]).name == f"{kind}.jpg"]
    if kind == "folder":  # a folder named x.jpg is a folder: its photo is scanned, it is not skipped
        assert not skipped
        return
    assert len(skipped) == 1 and skipped[0]["reason"].startswith(EXPECTED[kind]), scan["value"]
    assert "\n" not in skipped[0]["reason"]


def test_a_sparse_file_is_refused_before_any_byte_is_read(tmp_path, monkeypatch):
    big = tmp_path / "big.jpg"
    make_special("sparse-300MB", big, tmp_path)
    reads = []
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: reads.append(n) or real_read(fd, n))
    with pytest.raises(ImageError, match="over the 256 MB limit"):
        probe_image(big)
    from graft.data.images import MAX_FILE_BYTES

    assert not reads and MAX_FILE_BYTES == 256 << 20
