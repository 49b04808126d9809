"""Fine-tuning without validation photos, and a resume with other settings (issue 14)."""

from __future__ import annotations

import pytest
import torch

from graft.errors import GraftError

from conftest import _strict_json, make_photo_folder


def test_fine_tuning_without_validation_photos_reports_no_validation_figures(tmp_path):
    """Nothing to stop on or choose by (graft/finetune/loop.py): every epoch runs, even past a
    patience of 1, the last one is kept, and the history holds null for the validation figures."""
    from safetensors.torch import load_file

    import graft

    photos = make_photo_folder(tmp_path / "photos", per_class=1, seed=11)  # 1 photo a class: all train
    result = graft.train(photos, tmp_path / "run", strategy="partial", train_stages=2, epochs=3, patience=1,
                         batch_size=4, augment="none", cache_dir=tmp_path / "cache", workers=0, progress=False)
    m = _strict_json(result.run_dir / "metrics.json")
    assert m["strategy"] == "partial" and m["n_train"] == 2 and m["n_val"] == 0
    assert m["epochs_run"] == 3 and m["best_epoch"] == 3
    h = m["history"]
    assert h["val_loss"] == [None] * 3 and h["val_accuracy"] == [None] * 3  # no figure made up
    assert len(h["train_loss"]) == 3 and all(isinstance(v, float) for v in h["train_loss"])
    assert m["val_loss"] is None and m["val_accuracy"] is None
    # the run holds the weights as the last epoch left them, not a "best" one restored
    ck = torch.load(result.run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ck["best_model"] is None
    saved = load_file(str(result.run_dir / "model.safetensors"))
    assert set(saved) == set(ck["model"]) and {"head.weight", "head.bias"} <= set(saved)
    assert all(torch.equal(saved[k], ck["model"][k]) for k in saved)


def test_resume_with_other_settings_is_refused_naming_them(tmp_path):
    """A checkpoint made with batch size 8 and lr 1e-3 is not continued with 4 and 1e-2 (issue 14, item
    5: it used to run to the end and record the new values)."""
    from graft.finetune.callbacks import load_checkpoint
    from graft.finetune.config import FinetuneConfig

    made = FinetuneConfig(batch_size=8, lr=1e-3, epochs=5)
    torch.save({"config": made.to_json(), "model": {}}, tmp_path / "checkpoint.pt")
    with pytest.raises(GraftError) as e:
        load_checkpoint(tmp_path / "checkpoint.pt", FinetuneConfig(batch_size=4, lr=1e-2, epochs=5))
    msg = str(e.value)
    assert "batch_size=8 (now 4)" in msg and "lr=0.001 (now 0.01)" in msg and "epochs" not in msg, msg
    assert load_checkpoint(tmp_path / "checkpoint.pt", made)["config"] == made.to_json()


def test_22_also_interrupt_and_resume_name_the_same_position(tmp_path):
    """Ctrl-C said "interrupted at epoch 3, step 1" and --resume then "resuming from epoch 2, step 1"
    of the same checkpoint (issue 22): the one counted epochs from 1, the other from 0. A real run
    is interrupted (SIGINT once its first checkpoint exists) and resumed; both name one position."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    photos = make_photo_folder(tmp_path / "photos", per_class=8, seed=5)
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "graft", "train", str(photos), "--out", str(run), "--strategy", "partial",
            "--train-stages", "1", "--epochs", "6", "--patience", "0", "--batch-size", "4", "--workers", "0",
            "--aug-views", "0", "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    env = {**os.environ, "GRAFT_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        deadline = time.monotonic() + 500
        while not (run / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=300)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    stopped = re.search(r"interrupted at (epoch \d+, after step \d+);", err)
    assert proc.returncode == 2 and stopped, err[-2000:]
    resumed = subprocess.run([*argv, "--resume"], capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming at {stopped.group(1)} of " in resumed.stderr, (stopped.group(1), resumed.stderr[-2000:])
