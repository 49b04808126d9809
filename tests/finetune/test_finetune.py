"""graft/finetune/loop.py with the real default backbone (EfficientNet-Lite0) on the CPU, on tiny
generated photo sets: partial fine-tuning leaves the frozen stages bit-identical and trains the
others, new hidden layers replace the last stages, full / from-scratch runs save whole networks,
checkpoints load safely, and a run killed mid-epoch then resumed ends with exactly the weights of
an uninterrupted one (with and without augmentation). Also plan_stages' errors and lr_factor.

Training runs happen once per module (fixtures) and share one feature cache; the resume checks
run the real `graft` executable, since killing a process is the point.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import graft
from conftest import fixed_batch, isolated_env, make_photo_folder, make_split_folder
from graft.backbones import Backbone, WeightsInfo, load_backbone
from graft.errors import GraftError
from graft.finetune.config import FinetuneConfig, lr_factor, plan_stages
from graft.run import CHECKPOINT
from graft.run.store import load_run
from graft.backbones.preprocess import Preprocessing

GRAFT = Path(sys.executable).with_name("graft")
GRAFT_CMD = [str(GRAFT)] if GRAFT.exists() else [sys.executable, "-m", "graft"]
TRAIN_STAGES = 2
QUICK = dict(batch_size=4, workers=0, progress=False)


# --- shared data and runs -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """PHOTOS/train (2 classes x 6) + PHOTOS/val (2 x 2): 8 images per class, one shared cache."""
    root = tmp_path_factory.mktemp("finetune")
    photos = root / "photos"
    make_split_folder(photos, train=6, val=2, seed=11)
    return types.SimpleNamespace(root=root, photos=photos, cache=root / "cache")


def _train(tiny, out, **kw):
    args = {**QUICK, "augment": "none", "cache_dir": tiny.cache, **kw}
    with isolated_env(tiny.root):
        return graft.train(tiny.photos, tiny.root / out, **args)


def _stage_state(backbone) -> dict:
    """{stage name: [state dict of each module]} cloned: weights and BatchNorm statistics."""
    return {name: [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in mods]
            for name, mods in backbone.stages}


def _partial_run(tiny, out, augment, epochs):
    bb = load_backbone()
    bb.eval()
    before = _stage_state(bb)
    result = _train(tiny, out, backbone=bb, strategy="partial", train_stages=TRAIN_STAGES, augment=augment,
                    epochs=epochs, patience=0)
    return types.SimpleNamespace(backbone=bb, before=before, after=_stage_state(bb), run=result.run_dir,
                                 metrics=result.metrics)


@pytest.fixture(scope="module")
def partial_run(tiny):
    """strategy partial, last 2 stages, no augmentation (boundary cache), 3 epochs."""
    return _partial_run(tiny, "partial", "none", epochs=3)


@pytest.fixture(scope="module")
def partial_aug_run(tiny):
    """The same with light augmentation: every batch runs the frozen stages (no boundary cache)."""
    return _partial_run(tiny, "partial-aug", "light", epochs=1)


def _frozen_and_trainable(run):
    stages = run.backbone.stages
    return stages[:-TRAIN_STAGES], stages[-TRAIN_STAGES:]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- 1. partial ---------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["partial_run", "partial_aug_run"])
def test_partial_frozen_stages_are_untouched(which, request):
    run = request.getfixturevalue(which)
    frozen, trainable = _frozen_and_trainable(run)
    assert len(frozen) == len(run.backbone.stages) - TRAIN_STAGES >= 1
    n_bn = 0
    for name, mods in frozen:
        for m in mods:
            assert all(not p.requires_grad for p in m.parameters()), name
        for i, state in enumerate(run.before[name]):
            n_bn += sum("running_mean" in k for k in state)
            assert _same(state, run.after[name][i]), f"frozen stage {name} changed"
    assert n_bn > 0  # BatchNorm running statistics were compared too
    for name, mods in trainable:
        assert all(p.requires_grad for m in mods for p in m.parameters()), name
        changed = [not _same(s, run.after[name][i]) for i, s in enumerate(run.before[name])]
        assert any(changed), f"trainable stage {name} did not change"


def test_partial_metrics_and_model_json(partial_run, partial_aug_run):
    for run, boundary in ((partial_run, True), (partial_aug_run, False)):
        m = json.loads((run.run / "metrics.json").read_text())
        assert m["strategy"] == "partial"
        assert m["finetune"]["strategy"] == "partial" and m["finetune"]["train_stages"] == TRAIN_STAGES
        assert m["finetune"]["boundary_cache"] is boundary
        assert m["finetune"]["resumed_from_epoch"] is None
        assert m["n_train"] == 12 and m["n_val"] == 4
        meta = json.loads((run.run / "model.json").read_text())
        assert meta["strategy"] == "partial"
        assert meta["backbone"]["stored"] is True and meta["cut"] is None
        assert meta["head"]["type"] == "linear" and meta["head"]["in_features"] == run.backbone.feature_dim
        assert meta["training"]["finetune"]["train_stages"] == TRAIN_STAGES
    assert partial_run.metrics["epochs_run"] == 3 and len(partial_run.metrics["history"]["val_loss"]) == 3
    assert partial_run.metrics["augmentation"] is None
    assert partial_aug_run.metrics["augmentation"]["preset"] == "light"


def test_train_summary_names_the_report_the_decoded_photos_and_a_better_probe(partial_run, partial_aug_run):
    """What `graft train` prints after a fine-tune: the report's path, the decoded photos the run
    left in the cache (augmented fine-tuning decodes each training photo once), and, when the
    frozen head scored higher, that it did."""
    from graft.cli.train import train_summary
    from graft.data.decoded import stored_bytes

    m = partial_aug_run.metrics
    decoded = m["cache"]["decoded"]
    # the photos fine-tuning trained on (training photos less the inner early-stopping split), once each
    assert decoded["files"] == m["finetune"]["trained_on"] < m["n_train"] and decoded["bytes"] > 0
    assert decoded["folder_bytes"] >= decoded["bytes"]
    assert stored_bytes(decoded["dir"], []) == (0, 0)
    text = train_summary(m, partial_aug_run.run)
    assert str(partial_aug_run.run / "report.html") in text and (partial_aug_run.run / "report.html").is_file()
    assert "decoded photos" in text and decoded["dir"] in text
    assert str(partial_aug_run.run / "log.csv") in text
    assert "decoded" not in partial_run.metrics["cache"]  # boundary cache: no photo was decoded for training
    worse = {**partial_run.metrics, "probe_val_accuracy": 0.954, "val_accuracy": 0.935}
    assert "the frozen head was better: 0.954 vs 0.935" in train_summary(worse, partial_run.run)
    better = {**partial_run.metrics, "probe_val_accuracy": 0.9, "val_accuracy": 0.935}
    assert "frozen head was better" not in train_summary(better, partial_run.run)


def test_partial_saved_run_is_the_trained_model(partial_run, tiny):
    tensors = load_file(str(partial_run.run / "model.safetensors"))
    state = partial_run.backbone.state_dict()  # trained in place: it holds the best epoch's weights
    assert {f"backbone.{k}" for k in state} == {k for k in tensors if k.startswith("backbone.")}
    for k, v in state.items():
        assert torch.equal(tensors[f"backbone.{k}"], v), k
    model = load_run(partial_run.run)
    x = fixed_batch()
    partial_run.backbone.eval()
    with torch.inference_mode():  # same weights (bit for bit, above); the two may run different conv
        # kernels (memory format), so outputs agree to float32 rounding, not bit for bit
        torch.testing.assert_close(model.backbone(x), partial_run.backbone(x), atol=1e-4, rtol=1e-4)
    m = graft.evaluate(partial_run.run, tiny.photos, cache_dir=tiny.cache, workers=0)
    assert m["accuracy"] == partial_run.metrics["val_accuracy"]
    assert m["confusion"] == partial_run.metrics["confusion"]
    preds = graft.predict(partial_run.run, [tiny.photos / "val"], workers=0)
    assert len(preds) == 4 and all(len(p["predictions"]) == 2 for p in preds)


def test_checkpoint_loads_with_weights_only(partial_run):
    ck = torch.load(partial_run.run / CHECKPOINT, map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng", "state", "best_model", "config"} <= set(ck)
    assert ck["state"]["epoch"] == 3 and ck["state"]["step"] == 0
    assert ck["config"]["strategy"] == "partial" and ck["config"]["train_stages"] == TRAIN_STAGES
    assert isinstance(ck["rng"], torch.Tensor)


# --- 2. new hidden layers -----------------------------------------------------------------------

def test_new_hidden_replaces_the_last_stages(tiny, default_backbone):
    res = _train(tiny, "hidden", strategy="partial", train_stages=TRAIN_STAGES, new_hidden=(32,), epochs=2)
    meta = json.loads((res.run_dir / "model.json").read_text())
    n_stages = len(default_backbone.stage_names)
    assert meta["cut"] == n_stages - TRAIN_STAGES
    assert meta["head"]["type"] == "mlp" and meta["head"]["hidden"] == [32]
    assert meta["head"]["out_features"] == 2
    assert res.metrics["finetune"]["new_hidden"] == [32] and res.metrics["finetune"]["boundary_cache"] is True
    model = load_run(res.run_dir)
    assert isinstance(model.head, nn.Sequential) and model.cut == meta["cut"]
    assert [m.out_features for m in model.head if isinstance(m, nn.Linear)] == [32, 2]
    preds = graft.predict(res.run_dir, [tiny.photos / "val"], workers=0)
    assert len(preds) == 4 and all(p["predictions"][0]["class"] in ("blue", "red") for p in preds)
    m = graft.evaluate(res.run_dir, tiny.photos, cache_dir=tiny.cache, workers=0)
    assert m["accuracy"] == res.metrics["val_accuracy"]


# --- 3. full, from scratch ----------------------------------------------------------------------

def test_full_trains_every_stage(tiny, default_backbone):
    res = _train(tiny, "full", strategy="full", epochs=1)
    meta = json.loads((res.run_dir / "model.json").read_text())
    assert meta["strategy"] == "full" and meta["backbone"]["stored"] is True and meta["cut"] is None
    assert res.metrics["finetune"]["boundary_cache"] is False
    tensors = load_file(str(res.run_dir / "model.safetensors"))
    pretrained = default_backbone.state_dict()
    module_name = {id(m): n for n, m in default_backbone.named_modules()}
    for name, mods in default_backbone.stages:  # the stem too: nothing was frozen
        keys = [f"{module_name[id(m)]}.{k}" for m in mods for k in m.state_dict() if k.endswith("weight")]
        assert keys and any(not torch.equal(tensors[f"backbone.{k}"], pretrained[k]) for k in keys), name
    preds = graft.predict(res.run_dir, [tiny.photos / "val"], workers=0)
    assert all("predictions" in p for p in preds)


def test_from_scratch_starts_from_random_weights(tiny, default_backbone):
    res = _train(tiny, "scratch", strategy="full", from_scratch=True, epochs=1)
    meta = json.loads((res.run_dir / "model.json").read_text())
    assert meta["strategy"] == "full" and meta["backbone"]["stored"] is True
    assert res.metrics["finetune"]["from_scratch"] is True
    tensors = load_file(str(res.run_dir / "model.safetensors"))
    pretrained = default_backbone.state_dict()
    weights = [k for k, v in pretrained.items() if k.endswith("weight") and v.ndim == 4]  # convolutions
    assert weights
    # one epoch at lr 1e-3 moves a pretrained weight by ~1e-3; random initialisation moves it by O(1)
    far = [k for k in weights if (tensors[f"backbone.{k}"] - pretrained[k]).abs().max() > 0.05]
    assert len(far) > 0.9 * len(weights)
    model = load_run(res.run_dir)
    with torch.inference_mode():
        assert model(fixed_batch()).shape == (2, 2)


def test_from_scratch_partial_does_not_poison_the_boundary_cache(tiny, partial_run):
    """partial + from_scratch once re-initialised the frozen prefix and cached its random
    activations under the pretrained weights' key; it is refused now, and the cache stays clean."""
    cache = tiny.root / "cache-scratch"
    with pytest.raises(GraftError, match="--strategy full"):
        _train(tiny, "scratch-partial", cache_dir=cache, strategy="partial", train_stages=TRAIN_STAGES,
               from_scratch=True, epochs=1)
    # same settings as partial_run (fresh cache then): must give the very same weights
    res = _train(tiny, "after-scratch", cache_dir=cache, strategy="partial", train_stages=TRAIN_STAGES,
                 epochs=3, patience=0)
    a = load_file(str(res.run_dir / "model.safetensors"))
    b = load_file(str(partial_run.run / "model.safetensors"))
    assert _same(a, b)


# --- 5. resume errors -----------------------------------------------------------------------------

def test_resume_without_checkpoint_is_the_first_run(tiny, partial_run):
    """A run killed before its first checkpoint (e.g. while extracting) resumes from the start."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("graft")
    log.addHandler(handler)
    try:
        res = _train(tiny, "never-ran", strategy="partial", train_stages=TRAIN_STAGES, epochs=3, patience=0,
                     resume=True)
    finally:
        log.removeHandler(handler)
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert any("no checkpoint" in w and "from the start" in w for w in warnings), warnings
    assert res.metrics["finetune"]["resumed_from_epoch"] is None
    assert _same(load_file(str(res.run_dir / "model.safetensors")),
                 load_file(str(partial_run.run / "model.safetensors")))


def test_resume_with_other_train_stages_is_refused(tiny, partial_run):
    run = tiny.root / "other-stages"
    run.mkdir()
    shutil.copy(partial_run.run / CHECKPOINT, run / CHECKPOINT)
    with pytest.raises(GraftError) as e:
        _train(tiny, "other-stages", strategy="partial", train_stages=3, epochs=3, patience=0, resume=True)
    msg = str(e.value)
    assert "train_stages" in msg and "2" in msg and "3" in msg and "same settings" in msg
    assert not (run / "model.json").exists()


# --- 6. plan_stages -------------------------------------------------------------------------------

def _fake_backbone(n=9, sequential=True):
    return types.SimpleNamespace(stage_names=[f"s{i}" for i in range(n)], arch="fake:net", sequential=sequential)


@pytest.mark.parametrize("stages", [0, -1, 9, 10])
def test_plan_stages_rejects_out_of_range(stages):
    with pytest.raises(GraftError, match="between 1 and 8"):
        plan_stages(_fake_backbone(), FinetuneConfig(strategy="partial", train_stages=stages))


def test_plan_stages_real_backbone(default_backbone):
    n = len(default_backbone.stage_names)
    assert n == 9
    assert plan_stages(default_backbone, FinetuneConfig(train_stages=2)) == (n - 2, None)
    assert plan_stages(default_backbone, FinetuneConfig(train_stages=1)) == (n - 1, None)
    assert plan_stages(default_backbone, FinetuneConfig(train_stages=n - 1)) == (1, None)
    assert plan_stages(default_backbone, FinetuneConfig(train_stages=3, new_hidden=(8,))) == (n - 3, n - 3)
    assert plan_stages(default_backbone, FinetuneConfig(strategy="full")) == (0, None)
    for bad in (0, n):
        with pytest.raises(GraftError, match=f"between 1 and {n - 1}"):
            plan_stages(default_backbone, FinetuneConfig(train_stages=bad))
    with pytest.raises(GraftError, match="partial"):
        plan_stages(default_backbone, FinetuneConfig(strategy="full", new_hidden=(8,)))


class _Unknown(nn.Module):
    """A network graft has no stage recipe for (its forward is not its children in order)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)
        self.b = nn.Conv2d(3, 4, 3)
        self.c = nn.Conv2d(4, 5, 1)

    def forward(self, x):
        return self.c(self.a(x) + self.b(x)).mean((2, 3))


def test_plan_stages_needs_a_known_stage_by_stage_forward():
    bb = Backbone(_Unknown(), spec="custom", arch="custom:unknown",
                  preprocessing=Preprocessing(32, 36, "bicubic", (0.5,) * 3, (0.5,) * 3),
                  weights=WeightsInfo("random", "random"))
    assert not bb.sequential and len(bb.stage_names) == 3
    with pytest.raises(GraftError, match="stage-by-stage"):
        plan_stages(bb, FinetuneConfig(strategy="partial", train_stages=1))
    assert plan_stages(bb, FinetuneConfig(strategy="full")) == (0, None)  # full needs no stage forward
    with pytest.raises(GraftError, match="stage-by-stage"):
        plan_stages(_fake_backbone(sequential=False), FinetuneConfig(train_stages=2))


# --- 7. lr_factor ---------------------------------------------------------------------------------

def test_lr_factor_warmup_is_linear_and_reaches_one():
    total, warmup = 100, 10
    f = [lr_factor(s, total, warmup) for s in range(warmup)]
    assert f[0] == pytest.approx(1 / warmup) and f[-1] == 1.0
    steps = [b - a for a, b in zip(f, f[1:])]
    assert all(d == pytest.approx(1 / warmup) for d in steps)
    assert lr_factor(warmup, total, warmup) == 1.0  # cosine starts where warm-up ended


def test_lr_factor_cosine_decays_to_zero():
    total, warmup = 100, 10
    f = [lr_factor(s, total, warmup) for s in range(warmup, total + 1)]
    assert all(b <= a for a, b in zip(f, f[1:]))
    assert lr_factor((total + warmup) // 2, total, warmup) == pytest.approx(0.5)
    assert lr_factor(total - 1, total, warmup) < 0.01
    assert lr_factor(total, total, warmup) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(total + 5, total, warmup) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(0, total, 0) == 1.0  # no warm-up: full rate at once


# --- 4. kill and resume (the real executable) -----------------------------------------------------

EPOCHS = 5


@pytest.fixture(scope="module")
def resume_env(tmp_path_factory):
    """2 classes x 8 photos (about 12 for training: 3 steps of 4 per epoch) and their own cache."""
    root = tmp_path_factory.mktemp("resume")
    env = {**os.environ, "GRAFT_CACHE_DIR": str(root / "cache"), "GRAFT_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "TORCH_HOME": str(root / "torch-home")}
    return types.SimpleNamespace(root=root, env=env, photos=make_photo_folder(root / "photos", per_class=8, seed=21))


def _train_argv(photos, out, *extra):
    return ["train", str(photos), "--out", str(out), "--strategy", "partial", "--train-stages", str(TRAIN_STAGES),
            "--epochs", str(EPOCHS), "--patience", "0", "--batch-size", "4", "--quiet", *extra]


def _graft(env, argv, timeout=300):
    return subprocess.run([*GRAFT_CMD, *argv], env=env, capture_output=True, text=True, timeout=timeout)


def _ok(p):
    assert p.returncode == 0, f"graft exited {p.returncode}:\n{p.stderr[-3000:]}"
    return p


def _ident(path: Path):
    try:
        st = path.stat()
        return st.st_ino, st.st_mtime_ns, st.st_size
    except FileNotFoundError:
        return None


def _kill_during_epoch_3(env, argv, run: Path) -> int:
    """Start `graft argv` and SIGKILL it (with its loader workers) a third of an epoch into epoch 3.

    checkpoint.pt is polled; each new version is read with torch.load(weights_only=True) while the
    process group is held with SIGSTOP, so no checkpoint goes unseen however short an epoch is
    (epochs here take well under a second on cached activations). Once it says epoch 2 is done,
    the run goes on for a third of epoch 2's duration and is killed. Returns the epoch of the
    checkpoint left behind; fails loudly if the run ended before the kill (a vacuous resume). A later
    epoch may run quicker than epoch 2: a new checkpoint before that third is over is killed at once."""
    ckpt = run / CHECKPOINT
    with open(run.parent / f"{run.name}.stderr", "w+") as err:
        proc = subprocess.Popen([*GRAFT_CMD, *argv], env=env, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
        group = proc.pid  # its own session: the group holds graft and its loader workers only
        try:
            seen, last, found_at, held = [], None, {}, {}
            deadline = time.monotonic() + 400
            while not seen or seen[-1] < 2:
                if proc.poll() is not None:
                    err.seek(0)
                    pytest.fail(f"graft ended (exit {proc.returncode}) before its checkpoint of epoch 2 was seen "
                                f"(seen: {seen}); nothing was killed. stderr:\n{err.read()[-2000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"no checkpoint of epoch 2 within 400 s (seen: {seen})")
                try:
                    st = ckpt.stat()
                    ident = (st.st_ino, st.st_mtime_ns, st.st_size)
                except FileNotFoundError:
                    ident = None
                if ident is None or ident == last:
                    time.sleep(0.002)
                    continue
                os.killpg(group, signal.SIGSTOP)
                t = time.monotonic()
                last = ident
                epoch = torch.load(ckpt, map_location="cpu", weights_only=True)["state"]["epoch"]
                seen.append(epoch)
                found_at[epoch] = t
                if epoch < 2:
                    held[epoch] = time.monotonic() - t
                    os.killpg(group, signal.SIGCONT)
            assert seen[-1] == 2, f"checkpoints seen: {seen}; the one of epoch 2 was missed"
            epoch_s = found_at[2] - found_at.get(1, found_at[2]) - held.get(1, 0.0)
            os.killpg(group, signal.SIGCONT)
            until = time.monotonic() + min(2.0, max(0.0, epoch_s / 3))
            while time.monotonic() < until and _ident(ckpt) == last:  # a later epoch may be quicker than
                time.sleep(0.001)  # epoch 2 (bf16 kernels are made on first use): killed at its checkpoint
            finished = proc.poll() is not None
            os.killpg(group, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                os.killpg(group, signal.SIGKILL)
            proc.wait()
    if finished or (run / "metrics.json").exists():
        pytest.fail("the run finished before SIGKILL landed: the resume check would be vacuous")
    left = torch.load(ckpt, map_location="cpu", weights_only=True)["state"]
    assert 2 <= left["epoch"] < EPOCHS, f"killed too late: checkpoint of epoch {left['epoch']}"
    assert left["step"] == 0  # written at an epoch's end
    return left["epoch"]


def _resume_check(env, photos, root, name, extra):
    ref, run = root / f"{name}-uninterrupted", root / f"{name}-killed"
    _ok(_graft(env, _train_argv(photos, ref, *extra)))  # first: also fills the cache for the others
    killed_at = _kill_during_epoch_3(env, _train_argv(photos, run, *extra), run)
    assert not (run / "model.json").exists()
    _ok(_graft(env, _train_argv(photos, run, *extra, "--resume")))
    m = json.loads((run / "metrics.json").read_text())
    assert m["finetune"]["resumed_from_epoch"] == killed_at
    assert m["epochs_run"] == EPOCHS
    a = load_file(str(ref / "model.safetensors"))
    b = load_file(str(run / "model.safetensors"))
    assert set(a) == set(b)
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ after resuming from epoch {killed_at}: {differ[:5]}"
    ref_m = json.loads((ref / "metrics.json").read_text())
    assert m["history"]["val_loss"] == ref_m["history"]["val_loss"]
    assert m["val_accuracy"] == ref_m["val_accuracy"]
    # the training log continues across the kill: one row per epoch, as if never interrupted
    same = ("stage", "epoch", "train_loss", "val_loss", "val_accuracy", "lr", "lr_backbone")
    ref_log, log = _log_rows(ref), _log_rows(run)
    assert [[r[k] for k in same] for r in log] == [[r[k] for k in same] for r in ref_log]
    assert [int(r["epoch"]) for r in log if r["stage"] == "finetune"] == list(range(1, EPOCHS + 1))
    assert all(0 <= float(r["data_wait_share"]) <= 1 for r in log if r["stage"] == "finetune")
    return ref_m, m, run


def _log_rows(run: Path) -> list[dict]:
    import csv

    with open(run / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def resumed_augmented(resume_env):
    return _resume_check(resume_env.env, resume_env.photos, resume_env.root, "augmented",
                         ["--augment", "light", "--workers", "1"])


def test_resume_after_kill_equals_uninterrupted(resume_env):
    ref_m, m, run = _resume_check(resume_env.env, resume_env.photos, resume_env.root, "boundary",
                                  ["--augment", "none", "--workers", "0", "--log", "tensorboard"])
    assert ref_m["finetune"]["boundary_cache"] is True and m["finetune"]["boundary_cache"] is True
    # TensorBoard, append-only, got each epoch once: before the kill, and after it only the new ones
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert [s.step for s in acc.Scalars("finetune/val_loss")] == list(range(1, EPOCHS + 1))
    assert [s.value for s in acc.Scalars("finetune/val_loss")] == pytest.approx(m["history"]["val_loss"], abs=1e-5)


def test_resume_after_kill_equals_uninterrupted_with_augmentation(resumed_augmented):
    ref_m, m, _ = resumed_augmented
    assert ref_m["finetune"]["boundary_cache"] is False and m["finetune"]["boundary_cache"] is False
    assert m["augmentation"]["preset"] == "light"


def test_cli_resume_with_other_train_stages_is_one_line_error(resume_env, resumed_augmented):
    _, _, run = resumed_augmented
    other = resume_env.root / "other-stages"
    other.mkdir()
    shutil.copy(run / CHECKPOINT, other / CHECKPOINT)
    argv = _train_argv(resume_env.photos, other, "--augment", "light", "--workers", "0", "--resume")
    argv[argv.index("--train-stages") + 1] = "3"
    p = _graft(resume_env.env, argv)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("graft: error: "), p.stderr
    assert "train_stages=2" in lines[0] and "(now 3)" in lines[0] and "same settings" in lines[0], lines[0]
    assert not (other / "model.json").exists()


def test_calibrating_a_fine_tuned_run_fits_on_the_photos_it_held_out(tiny, partial_run, tmp_path):
    """A fine-tuned network has seen its training photos, so their predictions are no test: its
    thresholds are fitted on the training photos fine-tuning held out for early stopping (the
    inner split model.json records). A run that does not record it falls back, with a warning,
    to the validation photos."""
    import json
    import shutil

    from graft.use.calibrate import calibrate_run
    from graft.data import scan_photos
    from graft.data.folder import inner_split

    run = tmp_path / "run"
    shutil.copytree(partial_run.run, run)
    meta = json.loads((run / "model.json").read_text())
    share = meta["training"]["inner_split"]
    held = inner_split(scan_photos(tiny.photos), share, meta["training"]["finetune"]["seed"]).val
    with isolated_env(tiny.root):
        cal = calibrate_run(run, tiny.photos, cache_dir=tiny.cache, workers=0)
        assert cal["fit"]["photos"] == "inner" and cal["fit"]["n"] == len(held) == 2
        assert cal["val_unknown"]["n_val"] == 4 and cal["novelty"]["n_reference"] == 12
        del meta["training"]["inner_split"]
        meta.pop("record_sha256")  # a run of an older graft, which recorded no inner split (nor digests)
        (run / "model.json").write_text(json.dumps(meta))
        old = calibrate_run(run, tiny.photos, cache_dir=tiny.cache, workers=0)
    assert old["fit"]["photos"] == "validation" and old["fit"]["n"] == 4
    assert any("not an independent one" in w for w in old["warnings"])
