"""graft on two "nodes": two torchrun agents with c10d rendezvous on loopback, one process each.

Each node gets its own --out (a node's disk) and both share --cache-dir (the shared filesystem):
both ranks must finish, only rank 0 writes the run, and the features are computed once between
them (the cache holds each entry once, and the misses summed over ranks equal the photos).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import make_photo_folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(photos, cache, outs, args, timeout=600):
    port, rdzv_id = _free_port(), uuid.uuid4().hex[:8]
    env = dict(os.environ, GRAFT_OFFLINE="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    procs = []
    for out in outs:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", rdzv_id,
               "--local-addr", "127.0.0.1", "--max-restarts", "0",
               "-m", "graft", "train", str(photos), "--out", str(out), "--cache-dir", str(cache), *args,
               "--quiet", "--json"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            results.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rc, _, err in results:
        assert rc == 0, err[-3000:]  # both nodes' ranks finished
    reports = [[json.loads(line) for line in out.splitlines() if line.startswith("{")] for _, out, _ in results]
    assert sorted(len(r) for r in reports) == [0, 1], reports  # only rank 0 reports
    main = next(i for i, r in enumerate(reports) if r)
    assert (Path(outs[main]) / "model.json").is_file()
    assert not Path(outs[1 - main]).exists()  # nothing written on the other node's disk
    return reports[main][0]


def _entries_per_namespace(cache: Path) -> dict[str, list[str]]:
    from graft.cache.features import _read_header

    out = {}
    for ns in sorted(d for d in cache.iterdir() if (d / "namespace.json").is_file()):
        names = []
        for shard in ns.glob("*.safetensors"):
            if not shard.name.startswith("."):
                names += _read_header(shard)[0]
        out[json.loads((ns / "namespace.json").read_text())["point"]] = names
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_photo_folder(tmp_path_factory.mktemp("nodes") / "photos", per_class=10, seed=2)


def test_two_nodes_head(photos, tmp_path):
    m = _two_nodes(photos, tmp_path / "shared-cache", [tmp_path / "node0-run", tmp_path / "node1-run"],
                   ["--strategy", "head", "--batch-size", "4"])
    n = m["n_train"] + m["n_val"]
    assert n == 20 and m["cache"]["misses"] == n and m["cache"]["hits"] == 0
    entries = _entries_per_namespace(tmp_path / "shared-cache")
    assert list(entries) == ["pooled"]
    assert len(entries["pooled"]) == len(set(entries["pooled"])) == n  # each photo computed once


def test_two_nodes_partial_finetuning(photos, tmp_path):
    m = _two_nodes(photos, tmp_path / "shared-cache", [tmp_path / "node0-run", tmp_path / "node1-run"],
                   ["--strategy", "partial", "--train-stages", "2", "--augment", "none", "--epochs", "1",
                    "--patience", "0", "--batch-size", "4", "--workers", "0"])
    assert m["strategy"] == "partial" and m["finetune"]["boundary_cache"]
    assert len(m["history"]["train_loss"]) == 1
    n = m["n_train"] + m["n_val"]
    entries = _entries_per_namespace(tmp_path / "shared-cache")
    assert len(entries) == 2 and "pooled" in entries
    assert any(point.startswith("boundary:") for point in entries)
    # each computed once, by one of the two nodes: pooled features for every photo, boundary
    # activations for the training photos (fine-tuning's inner split included; the validation
    # photos are scored once through the whole fine-tuned network, not from the boundary)
    for point, names in entries.items():
        assert len(names) == len(set(names)) == (n if point == "pooled" else m["n_train"]), point
    assert m["cache"]["misses"] == n + m["n_train"]


def test_shards_named_by_another_node_are_read_even_when_not_listed(tmp_path, monkeypatch):
    """A shared filesystem's directory listing can lag behind another node's writes (NFS caches
    it); the shards every rank wrote are exchanged by name and read directly."""
    import numpy as np

    from graft.cache import FeatureCache

    ns = {"arch": "test", "point": "pooled"}
    writer = FeatureCache(tmp_path, ns)
    writer.put(["a", "b"], np.ones((2, 3), np.float32))
    reader = FeatureCache(tmp_path / "elsewhere", ns)
    reader.dir = writer.dir  # the same folder, seen from "another node" whose listing is stale
    monkeypatch.setattr(Path, "glob", lambda self, pattern: iter(()))
    reader.refresh()
    assert "a" not in reader
    reader.refresh(extra=[str(p) for p in writer.written])
    feats, missing = reader.get(["a", "b"])
    assert missing == [] and feats.sum() == 6


def test_cpu_threads_are_shared_per_machine_not_per_job(monkeypatch):
    from graft.finetune.distributed import Context

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert Context(rank=1, world=2, local_rank=0, local_world=1).cpu_threads() == 8  # two nodes
    assert Context(rank=1, world=2, local_rank=1, local_world=2).cpu_threads() == 4  # one node
