"""graft under torchrun: 2 CPU processes with gloo give what one process gives.

Head strategy: extraction is sharded across the ranks into one cache, which must hold the same
entries (features equal to 1e-5) as a one-process run's, and the head (trained once, on rank 0)
the same accuracy. Partial fine-tuning with DistributedDataParallel: each rank trains on half of
each epoch (so the global batch doubles and an epoch has half the steps); after 6 epochs the
accuracy is within 0.15 of one process on this tiny set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import make_photo_folder


def _env(cache):
    env = dict(os.environ)
    env.update(GRAFT_CACHE_DIR=str(cache), GRAFT_OFFLINE="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return env


def _train(args, cache, nproc=1):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd = (launcher if nproc > 1 else [sys.executable]) + ["-m", "graft", "train", *args, "--quiet", "--json"]
    r = subprocess.run(cmd, env=_env(cache), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, r.stdout  # only rank 0 reports
    return json.loads(lines[0])


def _entries(cache):
    from graft.cache import FeatureCache

    out = {}
    for ns in sorted(d for d in cache.iterdir() if (d / "namespace.json").exists()):
        meta = json.loads((ns / "namespace.json").read_text())
        meta.pop("format")
        c = FeatureCache(cache, meta)
        names = sorted(c._index)
        feats, missing = c.get(names)
        assert not missing
        out[ns.name] = dict(zip(names, feats))
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_photo_folder(tmp_path_factory.mktemp("dist") / "photos", per_class=10, seed=2)


def test_two_gloo_processes_share_extraction_and_match_one(photos, tmp_path):
    one = _train([str(photos), "--out", str(tmp_path / "one"), "--strategy", "head", "--batch-size", "4"],
                 tmp_path / "c1")
    two = _train([str(photos), "--out", str(tmp_path / "two"), "--strategy", "head", "--batch-size", "4"],
                 tmp_path / "c2", nproc=2)
    assert two["cache"]["misses"] == one["cache"]["misses"] == one["n_train"] + one["n_val"]
    assert two["val_accuracy"] == one["val_accuracy"]
    a, b = _entries(tmp_path / "c1"), _entries(tmp_path / "c2")
    assert a.keys() == b.keys()
    for ns in a:
        assert a[ns].keys() == b[ns].keys()
        for name in a[ns]:
            np.testing.assert_allclose(a[ns][name], b[ns][name], atol=1e-5)
    assert not (tmp_path / "two" / "checkpoint.pt").exists()
    assert (tmp_path / "two" / "model.json").exists()


def test_ddp_partial_finetuning_matches_one_process(photos, tmp_path):
    args = ["--strategy", "partial", "--train-stages", "2", "--augment", "none", "--epochs", "6",
            "--patience", "0", "--batch-size", "4", "--workers", "0"]
    one = _train([str(photos), "--out", str(tmp_path / "one"), *args], tmp_path / "c1")
    two = _train([str(photos), "--out", str(tmp_path / "two"), *args], tmp_path / "c2", nproc=2)
    assert two["strategy"] == "partial" and two["finetune"]["boundary_cache"]
    assert abs(two["val_accuracy"] - one["val_accuracy"]) <= 0.15
    assert len(two["history"]["train_loss"]) == 6
    # the checkpoint of a 2-process run resumes in one process (same settings: --resume refuses others)
    _train([str(photos), "--out", str(tmp_path / "two"), *args, "--resume"], tmp_path / "c2")
