"""model.json through graft.run.record.RunRecord: what save_run writes reads back as it was written,
key for key, and a document graft cannot use is one line naming it."""

from __future__ import annotations

import json

import pytest
from torch import nn

from graft.errors import GraftError
from graft.run.files import MODEL_JSON
from graft.run.record import RunRecord, written_by_graft
from graft.run.store import read_record, save_run

TRAINING = {"head": {"lr": 0.01, "seed": 3, "solver": "lbfgs", "strength": 0.5, "epochs": None,
                     "class_weight": "balanced"},
            "val_split": 0.2, "layout": "folders", "inner_split": 0.15, "final": False}
AUGMENTATION = {"preset": "light", "views": 2, "key": "k", "pipeline": {"hflip": {"p": 0.5}}}


@pytest.fixture
def run(tmp_path):
    from graft.backbones import resolve_backbone

    save_run(tmp_path / "run", head=nn.Linear(1280, 3), classes=["a", "b", "c"], source=resolve_backbone("default"),
             strategy="head", training=TRAINING, augmentation=AUGMENTATION)
    return tmp_path / "run"


def test_a_saved_run_reads_back_as_it_was_written(run):
    doc = json.loads((run / MODEL_JSON).read_text())
    assert list(doc) == ["written_by", "format", "graft_version", "classes", "strategy", "backbone",
                         "preprocessing", "head", "cut", "training", "augmentation", "model_sha256",
                         "record_sha256"]
    assert doc["training"] == TRAINING and doc["augmentation"] == AUGMENTATION
    record = read_record(run)
    assert json.loads(json.dumps(record.to_json())) == doc
    assert record.classes == ("a", "b", "c") and record.strategy == "head" and record.cut is None
    assert not record.backbone.stored and record.backbone.parts == ()
    assert record.head.widths == [1280, 3] and record.preprocessing.size == doc["preprocessing"]["size"]
    assert (record.training.head.solver, record.training.head.strength, record.training.head.seed) == ("lbfgs", 0.5, 3)
    assert record.training.finetune is None and record.training.inner_split == 0.15 and not record.training.final
    assert record.augmentation.views == 2 and record.augmentation.pipeline == {"hflip": {"p": 0.5}}
    assert written_by_graft(doc)


def test_a_run_saved_without_the_recipe_has_neither_entry(tmp_path):
    from graft.backbones import resolve_backbone

    save_run(tmp_path / "run", head=nn.Linear(1280, 2), classes=["a", "b"], source=resolve_backbone("default"),
             strategy="head")
    doc = json.loads((tmp_path / "run" / MODEL_JSON).read_text())
    assert "training" not in doc and "augmentation" not in doc
    record = read_record(tmp_path / "run")
    assert record.training is None and record.augmentation is None
    assert json.loads(json.dumps(record.to_json())) == doc


@pytest.mark.parametrize("change, says", [
    (lambda d: [d], "has format a JSON list, this graft reads format 1"),
    (lambda d: {**d, "format": 2}, "has format 2, this graft reads format 1"),
    (lambda d: {**d, "cut": -1}, 'is not a valid graft run: "cut" is -1, not a whole number'),
    (lambda d: {**d, "classes": ["a", "a", "b"]}, 'is not a valid graft run: "classes" names a class twice'),
])
def test_a_document_graft_cannot_use_is_one_line_naming_it(run, change, says):
    doc = json.loads((run / MODEL_JSON).read_text())
    with pytest.raises(GraftError) as e:
        RunRecord.from_json(change(doc), where="where/model.json")
    assert str(e.value).startswith(f"where/model.json {says}") and "\n" not in str(e.value)
