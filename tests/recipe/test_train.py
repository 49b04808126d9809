"""End to end with the real default backbone on the CPU: graft.train writes a complete run, a
second run is served entirely from the feature cache, the frozen backbone is never changed,
seeds reproduce, broken photos are skipped, and predict / evaluate work on the run.

The cold run (one per session) is `trained_run` in conftest.py; the warm runs here reuse its
cache, so only changed photos go through the network.
"""

from __future__ import annotations

import json
import shutil
import types

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import graft
from graft.backbones import DEFAULT_ARCH
from conftest import count_backbone_forwards, fixed_batch, isolated_env, make_photo

N = 20  # trained_run: 2 classes x 10


@pytest.fixture(scope="module")
def warm(trained_run):
    """The same photos trained again, from the cache, with the backbone named by spec."""
    root = trained_run.root
    with isolated_env(root), count_backbone_forwards() as calls:
        result = graft.train(trained_run.photos, root / "run-warm", cache_dir=trained_run.cache,
                             workers=0, progress=False)
    return types.SimpleNamespace(run=result.run_dir, metrics=result.metrics, forwards=len(calls))


def test_metrics_json_has_everything(trained_run):
    m = json.loads((trained_run.run / "metrics.json").read_text())
    assert m == json.loads(json.dumps(trained_run.metrics))  # what train returned is what it wrote
    for key in ("val_accuracy", "per_class", "confusion", "classes", "n_train", "n_val", "skipped",
                "strategy", "timings", "cache"):
        assert key in m, key
    assert m["classes"] == ["blue", "red"]
    assert m["strategy"] == "head"
    assert m["skipped"] == []
    assert m["n_train"] + m["n_val"] == N and m["n_val"] >= 2
    assert set(m["timings"]) >= {"extract_s", "train_s", "total_s"}
    assert all(isinstance(v, (int, float)) and v >= 0 for v in m["timings"].values())
    assert m["timings"]["total_s"] >= m["timings"]["extract_s"]
    assert (m["cache"]["hits"], m["cache"]["misses"]) == (0, N)  # cold cache
    assert set(m["per_class"]) == {"blue", "red"}
    assert sum(v["support"] for v in m["per_class"].values()) == m["n_val"]
    conf = np.array(m["confusion"])
    assert conf.shape == (2, 2) and conf.sum() == m["n_val"]
    assert m["val_accuracy"] == pytest.approx(np.trace(conf) / conf.sum())


def test_run_folder_files(trained_run, default_backbone):
    run = trained_run.run
    assert (run / "model.safetensors").is_file()
    meta = json.loads((run / "model.json").read_text())
    assert meta["classes"] == ["blue", "red"] and meta["strategy"] == "head"
    assert meta["backbone"]["weights_digest"] == default_backbone.weights.digest
    assert meta["backbone"]["arch"] == DEFAULT_ARCH and meta["backbone"]["stored"] is False
    assert meta["preprocessing"]["size"] == default_backbone.preprocessing.size
    tensors = load_file(str(run / "model.safetensors"))
    assert set(tensors) == {"head.weight", "head.bias"}  # only the head for the head strategy
    assert tensors["head.weight"].shape == (2, 1280) and tensors["head.bias"].shape == (2,)


def test_accuracy_is_high_on_easy_classes(trained_run):
    assert trained_run.metrics["val_accuracy"] >= 0.75
    assert trained_run.metrics["cv_accuracy"]["mean"] >= 0.75  # the training photos' own estimate


def test_frozen_backbone_is_bit_identical_after_training(trained_run, default_backbone):
    after = default_backbone.state_dict()
    before = trained_run.state_before
    assert list(after) == list(before)
    assert any("running_mean" in k for k in before)  # BatchNorm statistics are compared too
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert [p.requires_grad for p in default_backbone.parameters()] == trained_run.grad_before


def test_frozen_backbone_gives_identical_outputs_after_training(trained_run, default_backbone):
    default_backbone.eval()
    with torch.inference_mode():
        out = default_backbone(fixed_batch())
    assert torch.equal(out, trained_run.out_before)


def test_second_run_is_served_from_the_cache(warm):
    assert warm.metrics["cache"]["misses"] == 0
    assert warm.metrics["cache"]["hits"] == N
    assert warm.metrics["cache"]["forward_batches"] == 0
    assert warm.forwards == 0  # the network was not run, nor even built


def test_same_seed_same_head(trained_run, warm):
    a = load_file(str(trained_run.run / "model.safetensors"))
    b = load_file(str(warm.run / "model.safetensors"))
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert warm.metrics["val_accuracy"] == trained_run.metrics["val_accuracy"]


def test_other_seed_other_head(trained_run, tmp_path):
    """The AdamW head depends on the seed (initialisation, batch order). The L-BFGS probe solves a
    convex full-batch problem: the seed reaches it only through the folds that pick its strength."""
    heads = []
    for seed in (0, 1):
        result = graft.train(trained_run.photos, tmp_path / f"seed{seed}", cache_dir=trained_run.cache, seed=seed,
                             solver="adamw", workers=0, progress=False, report=False)
        assert result.metrics["cache"]["misses"] == 0 and result.metrics["head"]["solver"] == "adamw"
        heads.append(load_file(str(result.run_dir / "model.safetensors"))["head.weight"])
    assert not torch.equal(heads[0], heads[1])


def _copy_photos(trained_run, dst):
    shutil.copytree(trained_run.photos, dst)
    return dst


def test_changing_one_photo_costs_one_miss(trained_run, default_backbone, tmp_path):
    photos = _copy_photos(trained_run, tmp_path / "photos")
    target = photos / "red" / "red003.jpg"
    old = target.read_bytes()
    make_photo(np.random.default_rng(999), "red").save(target, format="JPEG")
    assert target.read_bytes() != old
    with count_backbone_forwards() as calls:
        result = graft.train(photos, tmp_path / "run", backbone=default_backbone,
                             cache_dir=trained_run.cache, workers=0, progress=False)
    m = result.metrics
    assert (m["cache"]["misses"], m["cache"]["hits"]) == (1, N - 1)
    assert len(calls) == 1 and calls[0].shape[0] == 1  # one image through the network
    assert m["skipped"] == []


def test_broken_photos_are_skipped_and_the_run_succeeds(trained_run, default_backbone, tmp_path):
    photos = _copy_photos(trained_run, tmp_path / "photos")
    zero = photos / "blue" / "zero.jpg"
    zero.write_bytes(b"")
    truncated = photos / "red" / "truncated.jpg"
    make_photo(np.random.default_rng(5), "red", size=(300, 240)).save(truncated, format="JPEG", quality=95)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    text = photos / "red" / "notes.jpg"
    text.write_text("not a photo")
    result = graft.train(photos, tmp_path / "run", backbone=default_backbone, cache_dir=trained_run.cache,
                         workers=0, progress=False)
    m = result.metrics
    reasons = {item["path"]: item["reason"] for item in m["skipped"]}
    assert set(reasons) == {str(zero), str(truncated), str(text)}
    assert "empty" in reasons[str(zero)]
    assert "truncated" in reasons[str(truncated)]
    assert m["n_train"] + m["n_val"] == N  # the good photos are all used
    assert m["cache"]["hits"] == N
    saved = json.loads((result.run_dir / "metrics.json").read_text())
    assert {item["path"] for item in saved["skipped"]} == set(reasons)
    assert (result.run_dir / "model.safetensors").is_file()


def test_predict(trained_run, tmp_path):
    photos = trained_run.photos
    images = [photos / "blue" / "blue000.jpg", photos / "red" / "red001.jpg",
              photos / "blue" / "blue005.jpg", photos / "red" / "red008.jpg"]
    bad = tmp_path / "bad.jpg"
    bad.write_text("not a photo")
    results = graft.predict(trained_run.run, images + [bad], topk=3, workers=0)
    assert [r["path"] for r in results] == [str(p) for p in images + [bad]]
    for path, r in zip(images, results):
        preds = r["predictions"]
        assert len(preds) == 2  # top-3 of 2 classes
        assert {p["class"] for p in preds} == {"blue", "red"}
        probs = [p["probability"] for p in preds]
        assert probs == sorted(probs, reverse=True)
        assert all(0.0 <= p <= 1.0 for p in probs) and sum(probs) <= 1.0 + 1e-5
        assert preds[0]["class"] == path.parent.name
    assert "predictions" not in results[-1] and "not an image" in results[-1]["error"]
    top1 = graft.predict(trained_run.run, images[:1], topk=1, workers=0)
    assert len(top1[0]["predictions"]) == 1 and top1[0]["predictions"][0]["class"] == "blue"


@pytest.fixture(scope="module")
def evaluated(trained_run):
    with isolated_env(trained_run.root), count_backbone_forwards() as calls:
        metrics = graft.evaluate(trained_run.run, trained_run.photos, cache_dir=trained_run.cache, workers=0)
    return metrics, calls


def test_evaluate(evaluated):
    m, _ = evaluated
    assert m["classes"] == ["blue", "red"] and m["n"] == N  # the whole folder: train and val photos
    assert m["accuracy"] >= 0.9
    assert np.array(m["confusion"]).sum() == N
    assert m["skipped"] == []


def test_evaluate_runs_no_photo_through_the_backbone(evaluated):
    _, calls = evaluated
    # at most the size probe of building the network: one all-zero image, never a photo
    assert all(x.shape[0] == 1 and not x.any() for x in calls), [tuple(x.shape) for x in calls]


def test_evaluate_from_cache_makes_no_forward_pass_at_all(evaluated):
    _, calls = evaluated
    assert calls == []


def test_evaluate_accepts_a_train_val_folder(trained_run, tmp_path):
    layout = tmp_path / "photos"
    for cls in ("blue", "red"):
        files = sorted((trained_run.photos / cls).iterdir())
        for sub, part in (("train", files[:7]), ("val", files[7:])):
            (layout / sub / cls).mkdir(parents=True)
            for f in part:
                shutil.copy(f, layout / sub / cls / f.name)
    m = graft.evaluate(trained_run.run, layout, cache_dir=trained_run.cache, workers=0)
    assert m["n"] == 6  # PHOTOS/val is what gets evaluated
    assert m["accuracy"] >= 0.8


# --- run hygiene: --out ----------------------------------------------------------------------------

def test_out_that_is_not_a_graft_run_is_refused(trained_run, tmp_path):
    """Nothing of the user's is overwritten: a folder of theirs, the photos, a class folder, a
    file; each refused in one line before a photo is read."""
    from graft.errors import GraftError

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    (theirs / "model.json").write_text('{"my": "own model"}')  # a model.json graft did not write
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    photos = _copy_photos(trained_run, tmp_path / "photos")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    cases = [(theirs, "not a graft run .*model.json, notes.txt"), (photos, "is the photo folder"),
             (photos / "red", "inside the photo folder"), (photos / "runs" / "new", "inside the photo folder"),
             (a_file, "is a file")]
    for out, why in cases:
        with pytest.raises(GraftError, match=why):
            graft.train(photos, out, cache_dir=trained_run.cache, workers=0, progress=False)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert (theirs / "notes.txt").read_text() == "mine" and a_file.read_text() == "mine"


def test_out_a_graft_run_or_an_empty_or_resumable_folder_is_accepted(trained_run, tmp_path):
    from graft.run.guard import check_out, is_graft_run

    photos = trained_run.photos
    assert is_graft_run(trained_run.run) and not is_graft_run(tmp_path)
    assert json.loads((trained_run.run / "model.json").read_text())["written_by"] == "graft"
    check_out(trained_run.run, photos)  # training over a run replaces it
    check_out(tmp_path / "new", photos)
    (tmp_path / "empty").mkdir()
    check_out(tmp_path / "empty", photos)
    killed = tmp_path / "killed"  # fine-tuning killed before its first model: --resume continues it
    killed.mkdir()
    (killed / "checkpoint.pt").write_bytes(b"")
    (killed / ".tmp-abc.pt").write_bytes(b"")  # an atomic write cut short
    check_out(killed, photos)


def test_a_run_killed_between_its_tensors_and_its_model_json_is_resumable(trained_run, tmp_path):
    """A kill after model.safetensors and before model.json (quick bf16 epochs made it land there in
    test_faults) leaves graft's tensors, marked in their metadata: --resume writes over them. The
    same name without the mark, or as a link, stays the user's."""
    import shutil

    from graft.errors import GraftError
    from graft.run.guard import check_out
    from safetensors.numpy import save_file

    photos = trained_run.photos
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "checkpoint.pt").write_bytes(b"")
    shutil.copy(trained_run.run / "model.safetensors", killed / "model.safetensors")
    check_out(killed, photos)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "checkpoint.pt").write_bytes(b"")
    save_file({"w": np.zeros(2, np.float32)}, str(theirs / "model.safetensors"))
    with pytest.raises(GraftError, match="not a graft run"):
        check_out(theirs, photos)
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "model.safetensors").symlink_to(trained_run.run / "model.safetensors")
    with pytest.raises(GraftError, match="not a graft run"):
        check_out(linked, photos)
