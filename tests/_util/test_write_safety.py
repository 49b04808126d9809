"""Nothing graft writes may destroy what it did not make (issue 22, items 1-6): every command that
writes a file outside the cache (export --out, predict --csv, augment preview -o, demo --data) against
a device node, a FIFO, a symlink to a file, a symlink to a device, an input photo, each file of a run,
a user file and a missing parent: refused in one line, nothing changed; `graft cache prune` deletes
only what graft named its own; two trainings into one --out."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from conftest import IS_ROOT, assert_one_line, graft_cli, isolated_env, make_photo, make_photo_folder

# what each target is made of: (kind, needs root)
TARGETS = ["device", "fifo", "socket", "symlink-to-file", "symlink-to-device", "user-file", "missing-parent"]


def _make_target(kind: str, where: Path) -> Path:
    """A path of `kind` in the folder `where` (a user's file that graft must leave as it is)."""
    path = where / f"target-{kind}.out"
    if kind == "device":
        if not IS_ROOT:
            pytest.skip("os.mknod needs root")
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a second /dev/null
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        import socket

        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(path))
        s.close()
    elif kind == "symlink-to-file":
        mine = where / "my-notes.txt"
        mine.write_text("my own notes\n")
        path.symlink_to(mine)
    elif kind == "symlink-to-device":
        path.symlink_to("/dev/null")
    elif kind == "user-file":
        path.write_bytes(b"the user's own file\n")
    elif kind == "missing-parent":
        path = where / "no-such-folder" / "deeper" / "target.out"
    return path


def _state(folder: Path) -> dict:
    """Everything under `folder` as it is: each name's type, size, inode, mtime and bytes (links
    not followed, their target named): equal before and after means nothing changed."""
    seen = {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        entry = (stat.S_IFMT(st.st_mode), st.st_size, st.st_ino, st.st_mtime_ns)
        if stat.S_ISLNK(st.st_mode):
            entry += (os.readlink(p),)
        elif stat.S_ISREG(st.st_mode):
            entry += (p.read_bytes(),)
        seen[str(p.relative_to(folder))] = entry
    return seen


def _refused(argv, capsys, folder: Path, *says):
    before = _state(folder)
    rc, out, err = graft_cli(argv, capsys)
    assert_one_line(rc, err, *says)
    assert _state(folder) == before, "a refused command changed files"


@pytest.fixture(scope="module")
def run(tmp_path_factory, trained_run):
    """A copy of the session's trained run (its own folder: exports go into it), and a photo."""
    root = tmp_path_factory.mktemp("write-safety")
    shutil.copytree(trained_run.run, root / "run")
    photos = make_photo_folder(root / "photos", per_class=3, seed=1)
    return root / "run", photos


def _commands(run_dir: Path, photos: Path, target: Path) -> dict[str, list]:
    photo = next(photos.rglob("*.jpg"))
    return {"export": ["export", run_dir, "--format", "onnx", "--out", target],
            "predict": ["predict", run_dir, photo, "--csv", target, "--workers", "0"],
            "augment-preview": ["augment", "preview", photos, "-o", target]}


# --- 1. one writer: what an output path may be -------------------------------------------------------

@pytest.mark.parametrize("command", ["export", "predict", "augment-preview"])
@pytest.mark.parametrize("kind", TARGETS)
def test_an_output_never_replaces_what_graft_did_not_make(run, tmp_path, capsys, command, kind):
    run_dir, photos = run
    target = _make_target(kind, tmp_path)
    with isolated_env(tmp_path):
        _refused(_commands(run_dir, photos, target)[command], capsys, tmp_path)
        assert not (tmp_path / "no-such-folder").exists()
    if kind == "device":
        assert stat.S_ISCHR(target.lstat().st_mode)


@pytest.mark.parametrize("command", ["predict", "augment-preview"])
def test_an_output_never_replaces_an_input_photo(run, tmp_path, capsys, command):
    run_dir, photos = run
    photo = next(photos.rglob("*.jpg"))
    with isolated_env(tmp_path):
        _refused(_commands(run_dir, photos, photo)[command], capsys, photos.parent, "reads")


def test_an_export_never_replaces_the_weights_it_reads(run, tmp_path, capsys):
    run_dir, photos = run
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(b"backbone weights")
    _refused(["export", run_dir, "--format", "onnx", "--out", weights, "--weights", weights], capsys, tmp_path)


@pytest.mark.parametrize("command", ["export", "predict", "augment-preview"])
def test_an_output_never_replaces_a_file_of_a_run(run, capsys, command):
    run_dir, photos = run
    names = sorted(p.name for p in run_dir.iterdir() if p.is_file())
    assert {"model.json", "model.safetensors", "metrics.json"} <= set(names)
    for name in names:
        with isolated_env(run_dir.parent):
            _refused(_commands(run_dir, photos, run_dir / name)[command], capsys, run_dir.parent, "run")


def test_export_refuses_the_users_own_model_and_record_beside_it(run, tmp_path, capsys):
    run_dir, _ = run
    user_run = tmp_path / "run"
    shutil.copytree(run_dir, user_run)
    (user_run / "model.onnx").write_bytes(b"my own onnx model")  # not in export.json: not graft's
    _refused(["export", user_run, "--format", "onnx"], capsys, tmp_path, "model.onnx")
    (tmp_path / "m.onnx.json").write_text('{"mine": true}\n')  # beside --out m.onnx: the user's
    _refused(["export", user_run, "--format", "onnx", "--out", tmp_path / "m.onnx"], capsys, tmp_path, "m.onnx.json")


def test_outputs_graft_made_are_replaced_and_links_to_them_kept(run, tmp_path, capsys):
    """What graft proves it made is written again (the same command twice works); a link to such a
    file is written through, the link kept."""
    run_dir, photos = run
    for command in ("export", "predict", "augment-preview"):
        target = tmp_path / f"{command}.out"
        argv = _commands(run_dir, photos, target)[command]
        with isolated_env(tmp_path):
            assert graft_cli(argv, capsys)[0] == 0
            first = target.read_bytes()
            link = tmp_path / f"link-{command}.out"
            link.symlink_to(target)
            argv[argv.index(target)] = link
            rc, _, err = graft_cli(argv, capsys)
        assert rc == 0, err
        assert link.is_symlink() and target.is_file() and target.read_bytes()[:8] == first[:8]


def test_the_atomic_writer_refuses_a_special_file_and_writes_through_a_link(tmp_path):
    from graft._util.atomic import write_bytes
    from graft.errors import GraftError

    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(GraftError, match="is a FIFO, not a regular file"):
        write_bytes(tmp_path / "fifo", b"x")
    assert stat.S_ISFIFO((tmp_path / "fifo").lstat().st_mode)
    (tmp_path / "real").write_bytes(b"old")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    write_bytes(tmp_path / "link", b"new")
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real").read_bytes() == b"new"
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(GraftError, match="a link to nothing"):
        write_bytes(tmp_path / "dangling", b"x")
    assert not (tmp_path / "nowhere").exists()


# --- 2. prune deletes only what graft named its own -------------------------------------------------

def test_prune_keeps_a_users_files_in_engines_digests_and_namespaces(tmp_path):
    from graft.cache.admin import prune

    cache = tmp_path / "cache"
    ns = cache / f"lite1-{'a' * 16}"
    ns.mkdir(parents=True)
    (ns / "namespace.json").write_text('{"arch": "lite1"}')
    shard = ns / f"{123456789:x}-42-{'b' * 8}.safetensors"  # graft's: goes
    shard.write_bytes(b"s" * 100)
    (cache / "engines").mkdir()
    engine = cache / "engines" / f"lite1-{'c' * 16}.onnx"  # graft's: goes
    engine.write_bytes(b"e" * 100)
    (cache / "digests").mkdir()
    index = cache / "digests" / f"{'d' * 24}.idx"  # graft's: goes
    index.write_bytes(b"i" * 100)
    users = [cache / "engines" / "my_production_model.onnx", cache / "digests" / "index.idx",
             ns / "weights.safetensors"]
    for f in users:
        f.write_bytes(b"the user's own")
    r = prune(cache, max_bytes=0)
    assert sorted(r.paths) == sorted(str(p) for p in (shard, engine, index))
    assert all(f.read_bytes() == b"the user's own" for f in users)


def test_prune_leaves_an_engines_folder_of_only_user_files_alone(tmp_path):
    from graft.cache.admin import prune, usage

    (tmp_path / "engines").mkdir()
    (tmp_path / "engines" / "model.onnx").write_bytes(b"mine")
    assert prune(tmp_path, max_bytes=0).paths == []
    assert {a.kind for a in usage(tmp_path)} == {"other"}


# --- 3. graft demo --data ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["users-photos", "file", "fifo", "symlink-to-folder", "missing-parent"])
def test_demo_never_writes_into_what_it_did_not_make(tmp_path, capsys, kind):
    pytest.importorskip("skimage.data")
    data = tmp_path / "data"
    if kind == "users-photos":
        (data / "train" / "cat").mkdir(parents=True)
        make_photo(np.random.default_rng(0), "red").save(data / "train" / "cat" / "cat-00.jpg")
    elif kind == "file":
        data.write_bytes(b"mine")
    elif kind == "fifo":
        os.mkfifo(data)
    elif kind == "symlink-to-folder":
        (tmp_path / "elsewhere").mkdir()
        data.symlink_to(tmp_path / "elsewhere")
    elif kind == "missing-parent":
        data = tmp_path / "nope" / "data"
    with isolated_env(tmp_path):
        _refused(["demo", "--data", data, "--out", tmp_path / "run"], capsys, tmp_path, "--data")
    assert not (tmp_path / "run").exists()


def test_demo_reuses_and_finishes_only_its_own_folder(tmp_path, monkeypatch):
    pytest.importorskip("skimage.data")
    from graft.data import demo

    root = demo.make_demo_photos(tmp_path / "d")
    assert json.loads((root / "demo.json").read_text())["complete"] is True
    photo = root / "train" / "cat" / "cat-00.jpg"
    photo.write_bytes(b"kept")  # a complete set is not written again
    assert demo.make_demo_photos(root) == root and photo.read_bytes() == b"kept"
    # killed half way: the marker says so, and the folder is graft's to finish
    (root / "demo.json").write_text(json.dumps({"complete": False}))
    demo.make_demo_photos(root)
    assert photo.read_bytes() != b"kept" and json.loads((root / "demo.json").read_text())["complete"] is True


# --- 4. two trainings into one --out ----------------------------------------------------------------

def test_a_second_train_into_a_run_being_written_is_refused(trained_run, tmp_path, capsys):
    """While one `graft train` holds --out (its lock), another into it is refused in one line and
    changes nothing; the lock goes with its process, killed too, so a stale one never blocks."""
    import subprocess
    import sys

    from graft.run.guard import lock_run, unlock_run

    out = tmp_path / "run"
    shutil.copytree(trained_run.run, out)
    held = lock_run(out)  # as the first training does from its start to its end
    try:
        with isolated_env(tmp_path):
            _refused(["train", trained_run.photos, "--out", out, "--workers", "0", "--quiet"], capsys, out,
                     "another graft train", str(os.getpid()))
    finally:
        unlock_run(held)
    assert not (out / ".graft-train.lock").exists()
    code = ("import sys, time; from graft.run.guard import lock_run; held = lock_run(sys.argv[1]); "
            "print('held', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(Exception, match="another graft train"):
            lock_run(out)
    finally:
        child.kill()  # killed: no chance to release it
        child.wait()
    unlock_run(lock_run(out))  # the kernel released it: not blocked
