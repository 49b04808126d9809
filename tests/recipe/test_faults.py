"""Fault injection: real `graft train` processes killed with SIGKILL at random moments, shared
caches, full disks. A killed run must resume from what was finished and end where an
uninterrupted run ends; nothing half-written may ever be trusted.

At least 20 kills: 10 during feature extraction / head training, 10 during fine-tuning.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make_photo_folder
from safetensors.torch import load_file

N_EXTRACTION_KILLS = 10
N_FINETUNE_SEEDS = 5  # two kills each


def _env(cache: Path) -> dict:
    env = dict(os.environ)
    env.update(GRAFT_CACHE_DIR=str(cache), GRAFT_OFFLINE="1", HF_HUB_OFFLINE="1")
    return env


def _cmd(photos, out, *extra):
    return [sys.executable, "-m", "graft", "train", str(photos), "--out", str(out), "--quiet",
            "--batch-size", "4", "--workers", "0", *extra]


def _run(cmd, env, timeout=300):
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return r


def _kill_when(cmd, env, reached, delay: float, timeout: float = 300) -> bool:
    """Start `cmd`; once `reached()` is true, wait `delay` s more and SIGKILL it. Kill moments are
    tied to progress (shards written, epochs checkpointed) plus a random delay, so they land at
    random points of the work however fast or loaded the machine is. True if it was killed."""
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while p.poll() is None and not reached() and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        p.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait()
        return True


def _shards(cache: Path) -> int:
    return sum(1 for f in cache.rglob("*.safetensors") if not f.name.startswith(".")) if cache.exists() else 0


def _checkpoint_epoch(run: Path) -> int:
    try:
        return torch.load(run / "checkpoint.pt", weights_only=True)["state"]["epoch"]
    except Exception:  # absent, or being replaced right now
        return -1


def _cache_is_sound(cache: Path) -> None:
    """Every shard graft would read parses and passes its checksum."""
    from graft.cache import FeatureCache

    for ns in [d for d in cache.iterdir() if d.is_dir() and (d / "namespace.json").exists()]:
        meta = json.loads((ns / "namespace.json").read_text())
        meta.pop("format", None)
        c = FeatureCache(cache, meta)
        assert c.dir == ns
        names = list(c._index)
        _, missing = c.get(names)
        assert missing == [], f"damaged shard trusted in {ns}"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_photo_folder(tmp_path_factory.mktemp("faults") / "photos", per_class=10, seed=5)


def test_kills_during_extraction_then_rerun_matches(photos, tmp_path):
    ref_cache = tmp_path / "ref-cache"
    _run(_cmd(photos, tmp_path / "ref", "--strategy", "head"), _env(ref_cache))
    ref_metrics = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    n_shards = _shards(ref_cache)
    ref_head = load_file(str(tmp_path / "ref" / "model.safetensors"))
    rng = random.Random(0)
    killed = 0
    for seed in range(N_EXTRACTION_KILLS):
        cache = tmp_path / f"cache{seed}"
        out = tmp_path / f"run{seed}"
        cmd = _cmd(photos, out, "--strategy", "head")
        target = rng.randint(1, n_shards - 1)
        killed += _kill_when(cmd, _env(cache), lambda: _shards(cache) >= target, rng.uniform(0.0, 0.3))
        if cache.exists():
            _cache_is_sound(cache)
        _run(cmd, _env(cache))
        m = json.loads((out / "metrics.json").read_text())
        assert m["val_accuracy"] == ref_metrics["val_accuracy"]
        assert m["n_train"] == ref_metrics["n_train"] and m["n_val"] == ref_metrics["n_val"]
        assert m["cache"]["hits"] + m["cache"]["misses"] == ref_metrics["cache"]["misses"]
        head = load_file(str(out / "model.safetensors"))
        for k, v in ref_head.items():  # features of a batch of 4 vs a resumed batch differ by ~1e-6
            assert torch.allclose(head[k], v, atol=1e-4), k
    assert killed >= N_EXTRACTION_KILLS * 0.7, f"only {killed} runs were still running when killed"


def test_kills_during_finetuning_then_resume_gives_identical_weights(photos, tmp_path):
    ref_cache = tmp_path / "ref-cache"
    args = ("--strategy", "partial", "--train-stages", "2", "--augment", "none", "--epochs", "4",
            "--patience", "0")
    _run(_cmd(photos, tmp_path / "warm", *args), _env(ref_cache))  # fills the caches
    _run(_cmd(photos, tmp_path / "ref", *args), _env(ref_cache))
    ref = load_file(str(tmp_path / "ref" / "model.safetensors"))
    rng = random.Random(1)
    killed = 0
    for seed in range(N_FINETUNE_SEEDS):
        cache = tmp_path / f"cache{seed}"
        shutil.copytree(ref_cache, cache)
        out = tmp_path / f"run{seed}"
        cmd = _cmd(photos, out, *args, "--resume")
        for _ in range(2):
            done = max(_checkpoint_epoch(out), 0)
            # kill somewhere in epoch target + 1 (of 4): after `target` checkpoints, plus a delay
            target = rng.randint(done + 1, 3) if done < 3 else done
            killed += _kill_when(cmd, _env(cache), lambda: _checkpoint_epoch(out) >= target,
                                 rng.uniform(0.0, 0.4))
            if (out / "checkpoint.pt").exists():
                torch.load(out / "checkpoint.pt", weights_only=True)  # never half-written
        _run(cmd, _env(cache))
        got = load_file(str(out / "model.safetensors"))
        assert got.keys() == ref.keys()
        for k in ref:
            assert torch.equal(got[k], ref[k]), f"seed {seed}: {k} differs after kill + resume"
    assert killed >= N_FINETUNE_SEEDS * 2 * 0.7, f"only {killed} runs were still running when killed"


def test_two_processes_share_one_cache_without_duplicated_work(photos, tmp_path):
    cache = tmp_path / "shared-cache"
    procs = [subprocess.Popen(_cmd(photos, tmp_path / f"r{i}", "--strategy", "head", "--json"), env=_env(cache),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    metrics = [json.loads(o[0]) for o in outs]
    n = metrics[0]["n_train"] + metrics[0]["n_val"]
    assert sum(m["cache"]["misses"] for m in metrics) <= n + 1  # each image computed once (+1)
    assert metrics[0]["val_accuracy"] == metrics[1]["val_accuracy"]
    _cache_is_sound(cache)


def test_disk_full_while_writing_keeps_previous_files(photos, tmp_path, monkeypatch):
    import graft
    import graft._util.atomic as atomic
    from graft.errors import GraftError

    out = tmp_path / "run"
    graft.train(photos, out, strategy="head", progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def no_space(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", no_space)
    with pytest.raises(GraftError, match="No space left on device"):
        graft.train(photos, out, strategy="head", progress=False, seed=1)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # old run intact, no temp files


def test_ctrl_c_saves_mid_epoch_and_resume_gives_identical_weights(photos, tmp_path):
    """SIGINT (Ctrl-C) finishes the current step, saves a checkpoint at that step, exits 2 with
    one line saying how to resume; resuming ends with an uninterrupted run's weights."""
    cache = tmp_path / "cache"
    args = ("--strategy", "partial", "--train-stages", "2", "--augment", "light", "--epochs", "3",
            "--patience", "0")
    _run(_cmd(photos, tmp_path / "ref", *args), _env(cache))
    ref = load_file(str(tmp_path / "ref" / "model.safetensors"))
    out = tmp_path / "interrupted"
    p = subprocess.Popen(_cmd(photos, out, *args), env=_env(cache), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while _checkpoint_epoch(out) < 1 and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # into epoch 2
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 2, err
    assert "Traceback" not in err and "--resume" in err
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["state"]["epoch"] >= 1
    _run(_cmd(photos, out, *args, "--resume"), _env(cache))
    got = load_file(str(out / "model.safetensors"))
    for k in ref:
        assert torch.equal(got[k], ref[k]), f"{k} differs after Ctrl-C + resume"
