"""Full disks under every writer (issue 14): a file size limit (RLIMIT_FSIZE) and a 64 KB tmpfs where
mounting is allowed give one GraftError line naming the file, no temp file left, the old file intact;
and the mode of what is written, strict JSON, and no safetensors temp file of its own."""

from __future__ import annotations

import math
import os
import shutil
import stat
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from graft._util.atomic import atomic_path, write_bytes, write_json
from graft.data.decoded import DecodedCache
from graft.errors import GraftError

from conftest import IS_ROOT, Children, _strict_json


# --- strict JSON ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, written", [
    (float("nan"), None), (float("inf"), None), (-math.inf, None), (np.float64("nan"), None),
    ([1.0, float("nan")], [1.0, None]), ({"a": {"b": (float("inf"), 2)}}, {"a": {"b": [None, 2]}}),
], ids=["nan", "inf", "-inf", "np-nan", "list", "nested"])
def test_json_written_by_graft_is_strict(tmp_path, value, written):
    write_json(tmp_path / "m.json", {"x": value, "ok": 0.5})
    assert _strict_json(tmp_path / "m.json") == {"x": written, "ok": 0.5}


# --- full disks, and one error path for every writer -------------------------------------------------

def _write_shard(d: Path):
    from graft.cache import FeatureCache

    FeatureCache(d / "cache", {"arch": "t"}).put([f"n{i}" for i in range(100)], np.ones((100, 1280), np.float32))


def _write_model(d: Path):
    from torch import nn

    from graft.backbones import resolve_backbone
    from graft.run.store import save_run

    save_run(d / "run", head=nn.Linear(1280, 50), classes=[f"c{i}" for i in range(50)],
             source=resolve_backbone("default"), strategy="head")


def _write_checkpoint(d: Path):
    from torch import nn

    from graft.finetune.callbacks import save_checkpoint
    from graft.finetune.config import FinetuneConfig

    net = nn.Linear(1280, 50)
    opt = torch.optim.AdamW(net.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    save_checkpoint(d / "run" / "checkpoint.pt", net, opt, sched, {"epoch": 1}, None, FinetuneConfig())


def _write_json(d: Path):
    write_json(d / "run" / "metrics.json", {"history": list(range(40_000))})


def _write_bytes(d: Path):
    write_bytes(d / "run" / "report.html", b"<p>" * 100_000)


# writer -> (the file it writes, or None for a new name each time; how it writes it)
WRITERS = {"shard": (None, _write_shard), "model.safetensors": ("run/model.safetensors", _write_model),
           "checkpoint": ("run/checkpoint.pt", _write_checkpoint), "json": ("run/metrics.json", _write_json),
           "bytes": ("run/report.html", _write_bytes)}


PREVIOUS = b"the previous version"


def attempt_write(name: str, d: Path) -> dict:
    """Run one writer into `d` over a previous version of its file; what it raised, and what it left."""
    target, write = WRITERS[name]
    old = d / target if target else None
    if old is not None:
        old.parent.mkdir(parents=True, exist_ok=True)
        old.write_bytes(PREVIOUS)
    try:
        write(d)
        outcome = {"error": None}
    except GraftError as e:
        outcome = {"error": "GraftError", "message": str(e)}
    except BaseException as e:  # noqa: BLE001 - reported
        outcome = {"error": type(e).__name__, "message": str(e)[:500]}
    files = sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())
    return {**outcome, "files": files, "old": old.read_bytes().decode("latin1")[:40] if old else None}


_FULL_DISK_CHILD = textwrap.dedent("""
    import json, resource, signal, sys
    from pathlib import Path
    sys.path[:0] = sys.argv[2:]  # this module's folder and conftest's
    import test_adversarial_writes as t
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
    root = Path(sys.argv[1])
    for name in t.WRITERS:
        (root / name).mkdir()
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, resource.RLIM_INFINITY))  # the previous versions fit
    print("RESULTS " + json.dumps({name: t.attempt_write(name, root / name) for name in t.WRITERS}))
""")


@pytest.fixture(scope="module")
def children(tmp_path_factory):
    """Every writer under a file size limit, in a child process started with the module's first use."""
    kids = Children(tmp_path_factory.mktemp("children"))
    fsize = tmp_path_factory.mktemp("fsize")
    here = Path(__file__).resolve().parent
    try:
        kids.start("fsize", [sys.executable, "-c", _FULL_DISK_CHILD, str(fsize), str(here), str(here.parent)],
                   timeout=300)
        yield kids
    finally:
        kids.close()


@pytest.fixture(scope="module")
def rlimit_results(children):
    """Every writer under a 64 KB file size limit (`ulimit -f`), in a child process."""
    return children.results_line("fsize")


def _check_failed_write(name: str, got: dict, why: str) -> None:
    assert got["error"] == "GraftError", got  # not a SafetensorError, RuntimeError, or a crash
    msg = got["message"]
    assert msg.startswith("could not write ") and "\n" not in msg, msg
    assert why in msg and "free space on" in msg, msg  # what to do
    assert not [f for f in got["files"] if ".tmp-" in f], got["files"]  # no temp file left
    if name == "shard":
        assert not [f for f in got["files"] if f.endswith(".safetensors")], got["files"]
        assert ".safetensors" in msg
    else:
        assert got["old"] == PREVIOUS.decode(), got  # the previous file is intact
        assert WRITERS[name][0] in msg


@pytest.mark.parametrize("name", list(WRITERS))
def test_a_file_size_limit_gives_one_line_for_every_writer(rlimit_results, name):
    _check_failed_write(name, rlimit_results[name], "the disk (or a size limit) is full")


@pytest.mark.parametrize("name", list(WRITERS))
def test_a_full_disk_gives_one_line_for_every_writer(tiny_tmpfs, name):
    d = tiny_tmpfs / name
    d.mkdir()
    try:
        got = attempt_write(name, d)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    _check_failed_write(name, got, "the disk (or a size limit) is full")


def test_a_folder_that_is_a_file_gives_one_line(tmp_path):
    (tmp_path / "out").write_text("a file of the user's")
    with pytest.raises(GraftError, match=r"could not write .*out/run/metrics.json: .*is a file, not a folder"):
        write_json(tmp_path / "out" / "run" / "metrics.json", {})
    assert (tmp_path / "out").read_text() == "a file of the user's"


@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only folders")
def test_a_read_only_folder_gives_one_line(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(GraftError, match="no permission to write in"):
            write_json(ro / "metrics.json", {})
    finally:
        ro.chmod(0o755)


def test_a_bug_inside_atomic_path_keeps_its_traceback_and_leaves_no_temp_file(tmp_path):
    with pytest.raises(RuntimeError, match="a bug"):
        with atomic_path(tmp_path / "x.safetensors") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("a bug, not a full disk")
    assert os.listdir(tmp_path) == []


# --- the mode of what graft writes ---------------------------------------------------------------------

def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


@pytest.mark.parametrize("name", list(WRITERS) + ["decoded"])
def test_files_graft_writes_are_as_readable_as_the_umask_allows(tmp_path, name):
    if name == "decoded":
        photo = tmp_path / "p.png"
        Image.new("RGB", (12, 9)).save(photo)
        DecodedCache(tmp_path / "dc").load(photo, "ab" * 32, (12, 9), 1)
    else:
        WRITERS[name][1](tmp_path)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "p.png"]
    assert written
    for p in written:
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~_umask(), p


def test_no_safetensors_file_graft_keeps_is_written_by_save_file(tmp_path, monkeypatch):
    """safetensors' save_file makes its own temp file beside the target (".tmpXXXXXX"); a kill
    during it left one in the run folder, and --resume then refused the folder as not graft's
    (found by test_faults). Every safetensors file graft keeps goes through _atomic.write_safetensors."""
    import safetensors.numpy
    import safetensors.torch
    from torch import nn

    from graft.backbones import resolve_backbone
    from graft.cache import FeatureCache
    from graft.run.store import save_run

    def refuse(*a, **k):
        raise AssertionError("save_file writes a temp file of its own beside the target")

    monkeypatch.setattr(safetensors.torch, "save_file", refuse)
    monkeypatch.setattr(safetensors.numpy, "save_file", refuse)
    save_run(tmp_path / "run", head=nn.Linear(4, 2), classes=["a", "b"], source=resolve_backbone("default"),
             strategy="head")
    cache = FeatureCache(tmp_path / "cache", {"arch": "test", "point": "pooled"})
    cache.put(["x", "y"], np.ones((2, 3), np.float32))
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert "model.safetensors" in names and not [n for n in names if n.startswith(".tmp")], names
    feats, missing = FeatureCache(tmp_path / "cache", {"arch": "test", "point": "pooled"}).get(["x", "y"])
    assert missing == [] and feats.sum() == 6
