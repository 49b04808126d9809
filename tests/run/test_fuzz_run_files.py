"""Fuzzed run files (issue 22): whatever model.json or calibration.json holds, graft reads the run
or refuses it with one GraftError; never another exception. A calibration graft accepts gives
finite probabilities that sum to one."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from graft.errors import GraftError
from graft.run.files import CALIBRATION_JSON, MODEL_JSON
from graft.run.record import RunRecord
from graft.run.store import read_record, save_run, tensors_digest

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                derandomize=True)

SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12)
           | st.sampled_from(["linear", "mlp", "bicubic", "default", "a", "b", "c", "0" * 64]))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=8) | st.sampled_from(["size", "resize", "mean", "std", "tiles", "parts", "hidden", "type"]),
    inner, max_size=4), max_leaves=10)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from graft.backbones import resolve_backbone

    run = tmp_path_factory.mktemp("fuzz-run") / "run"
    save_run(run, head=nn.Linear(1280, 3), classes=["a", "b", "c"], source=resolve_backbone("default"),
             strategy="head", training={"head": {"seed": 1}, "val_split": 0.2, "layout": "folders"})
    return run


@pytest.fixture(scope="module")
def model_doc(run):
    return json.loads((run / MODEL_JSON).read_text())


def _paths(doc, prefix=()):
    """Every (key path) into a JSON document."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, prefix + (i,))


def _mutated(doc, draw):
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(JSON)
    return doc


def _read(run) -> RunRecord | None:
    try:
        return read_record(run)
    except GraftError:
        return None


@given(data=st.binary(max_size=400))
@FUZZ
def test_22_12_fuzz_model_json_bytes(run, model_doc, data):
    (run / MODEL_JSON).write_bytes(data)
    try:
        assert _read(run) is None
    finally:
        (run / MODEL_JSON).write_text(json.dumps(model_doc))


@given(st.data())
@FUZZ
def test_22_7_fuzz_model_json_values(run, model_doc, data):
    """Entries replaced or removed at random; the digests dropped too, half the time, so that what
    a run of an older graft would be read as is fuzzed as well."""
    doc = _mutated(model_doc, data.draw)
    if data.draw(st.booleans()):
        doc.pop("record_sha256", None)
        doc.pop("model_sha256", None)
    (run / MODEL_JSON).write_text(json.dumps(doc))
    try:
        record = _read(run)
        if record is not None:  # accepted: a record graft can use, and it writes it back the same
            assert len(record.classes) == record.head.out_features
            assert json.loads(json.dumps(RunRecord.from_json(json.loads(json.dumps(record.to_json()))).to_json()))
    finally:
        (run / MODEL_JSON).write_text(json.dumps(model_doc))


@given(st.data())
@FUZZ
def test_22_7_fuzz_model_json_values_with_their_digest(run, model_doc, data):
    """Any change with the digests kept is refused, whatever it is."""
    doc = _mutated(model_doc, data.draw)
    if {k: v for k, v in doc.items() if k != "record_sha256"} == {
            k: v for k, v in model_doc.items() if k != "record_sha256"} or "record_sha256" not in doc:
        return
    (run / MODEL_JSON).write_text(json.dumps(doc))
    try:
        assert _read(run) is None
    finally:
        (run / MODEL_JSON).write_text(json.dumps(model_doc))


def _calibration(run) -> dict:
    return {"format": 1, "classes": ["a", "b", "c"], "model_sha256": tensors_digest(run), "temperature": 1.3,
            "threshold": 0.4, "keep": 0.95, "novelty": None}


@given(st.data())
@FUZZ
def test_22_7_fuzz_calibration_values(run, data):
    from graft.use.calibrate import load_calibration
    from graft.use.reject import apply_reject

    cal = _mutated(_calibration(run), data.draw)
    (run / CALIBRATION_JSON).write_text(json.dumps(cal))
    try:
        loaded = load_calibration(run)
    except GraftError:
        return
    logits = np.array([[1.0, -2.0, 0.5], [30.0, 30.0, -30.0], [0.0, 0.0, 0.0]])
    results = apply_reject([{"path": f"p{i}"} for i in range(3)], logits, loaded, classes=["a", "b", "c"])
    for r in results:
        p = [q["probability"] for q in r["predictions"]]
        assert all(np.isfinite(p)) and abs(sum(p) - 1) < 1e-5 and r["class"] in ("a", "b", "c", "unknown")


@given(data=st.binary(max_size=400))
@FUZZ
def test_22_12_fuzz_calibration_bytes(run, data):
    from graft.use.calibrate import load_calibration

    (run / CALIBRATION_JSON).write_bytes(data)
    with pytest.raises(GraftError):
        load_calibration(run)
