"""Tampered runs (issue 14, item 11): refused where a run is read, for every command, with one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from graft.errors import GraftError

from conftest import assert_one_line, graft_cli, make_photo


def _tamper(run: Path, how: str) -> None:
    """A tampering that also drops the digests model.json records (issue 22, item 7): the checks
    of what the run declares must hold for a run written before graft recorded them, too."""
    from safetensors.torch import load_file, save_file

    meta = json.loads((run / "model.json").read_text())
    meta.pop("model_sha256"), meta.pop("record_sha256")
    tensors = load_file(str(run / "model.safetensors"))
    if how == "3-classes":  # the issue's: predict failed with "index out of range", export wrote 3 classes
        meta["classes"].append("green")
    elif how == "3-classes-3-outputs":  # consistent in model.json, not with the tensors
        meta["classes"].append("green")
        meta["head"]["out_features"] = 3
    elif how == "no-head":
        del meta["head"]
    elif how.startswith("size-"):
        meta["preprocessing"]["size"] = int(how.removeprefix("size-"))
    elif how == "backbone-tensors":  # fine-tuned tensors in a head-only run
        tensors["backbone.net.conv_stem.weight"] = torch.zeros(32, 3, 3, 3)
    elif how == "stray-tensor":
        tensors["extra.weight"] = torch.zeros(2)
    elif how == "stored-without-backbone":
        meta["backbone"]["stored"] = True
    elif how == "classes-not-a-list":
        meta["classes"] = "blue,red"
    else:
        raise ValueError(how)
    (run / "model.json").write_text(json.dumps(meta))
    save_file(tensors, str(run / "model.safetensors"))


TAMPERED = {"3-classes": '"classes" lists 3 classes but the head has 2 outputs',
            "3-classes-3-outputs": "the head's tensors do not fit the head it describes (head.weight: shape [2, 1280], model.json's head needs [3, 1280])",
            "no-head": 'no "head"',
            "size-0": 'preprocessing "size" is 0, not a whole number in 16..4096',
            "size-30000": 'preprocessing "size" is 30000, not a whole number in 16..4096',
            "backbone-tensors": "backbone tensors in a run whose model.json says the backbone is not stored",
            "stray-tensor": "tensors model.json does not declare: extra.weight",
            "stored-without-backbone": "says the backbone is stored, but it holds no backbone tensor",
            "classes-not-a-list": '"classes" is not a list of class names'}


@pytest.fixture
def tampered(trained_run, tmp_path, request):
    run = tmp_path / "run"
    shutil.copytree(trained_run.run, run)
    _tamper(run, request.param)
    return run, TAMPERED[request.param]


@pytest.mark.parametrize("tampered", list(TAMPERED), indirect=True)
@pytest.mark.parametrize("command", ["predict", "export", "evaluate", "predictor"])
def test_a_tampered_run_is_refused_with_one_line_by_every_command(tampered, trained_run, tmp_path, capsys, command):
    import graft

    run, says = tampered
    photo = tmp_path / "p.jpg"
    make_photo(np.random.default_rng(0), "red").save(photo)
    before = sorted(p.name for p in run.iterdir())
    if command == "predictor":
        with pytest.raises(GraftError) as e:
            graft.Predictor(run, engine="torch").predict([photo])
        err, rc = str(e.value), 2
    else:
        argv = {"predict": ["predict", run, photo, "--workers", "0"],
                "export": ["export", run, "--format", "onnx", "--quiet"],
                "evaluate": ["evaluate", run, trained_run.photos, "--workers", "0",
                             "--cache-dir", tmp_path / "cache"]}[command]
        rc, out, err = graft_cli(argv, capsys)
        assert out == ""
    assert_one_line(rc, err, says, str(run))
    assert "altered or damaged" in err
    assert sorted(p.name for p in run.iterdir()) == before  # nothing exported from it


@pytest.mark.parametrize("spec", [{"type": "linear", "in_features": 1280, "out_features": 5},
                                  {"type": "mlp", "in_features": 64, "out_features": 3, "hidden": [32, 16],
                                   "dropout": 0.2}], ids=["linear", "mlp"])
def test_the_run_check_knows_the_heads_tensors_without_torch(spec):
    from graft.heads.softmax import head_from_spec
    from graft.run.store import head_tensor_shapes

    built = {f"head.{k}": list(v.shape) for k, v in head_from_spec(spec).state_dict().items()}
    assert head_tensor_shapes(spec) == built


def test_a_run_with_a_huge_head_in_model_json_is_refused_before_building_it(trained_run, tmp_path):
    from graft.run.store import read_record

    run = tmp_path / "run"
    shutil.copytree(trained_run.run, run)
    meta = json.loads((run / "model.json").read_text())
    meta["head"].update(type="mlp", hidden=[1 << 20, 1 << 20])  # 4 TB of float32
    (run / "model.json").write_text(json.dumps(meta))
    with pytest.raises(GraftError, match=r'"head" has layer widths .*: over 268435456 parameters'):
        read_record(run)
