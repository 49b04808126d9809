"""The two engines that run a run's network for the Predictor, with the same answers
(probabilities within 1e-5), and the choice between them:

  onnx   the run's own ONNX export (RUN/model.onnx, `graft export RUN --format onnx`) while it is
         fresh: export.json says it was made from this very model.safetensors and calibration,
         and the file still hashes to what export.json recorded. It needs only onnxruntime,
         numpy and Pillow: no torch, no timm, so a one-photo `graft predict` starts in about a
         second instead of ten.
  torch  the run's network rebuilt with torch (graft.run.store.load_run): always possible, and the
         one a feature cache (`cache_dir`: cached features skip the backbone) or a GPU needs.

Both take uint8 (N, size, size, 3) crops and give (logits (N, C) float64, novelty (N,) or None).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from graft._util.digest import sha256_file
from graft.errors import GraftError
from graft.run.files import CALIBRATION_JSON, EXPORT_FORMAT, EXPORT_JSON, MODEL_TENSORS, ONNX_MODEL
from graft.run.record import RunRecord

ENGINES = ("auto", "onnx", "torch")


def choose_engine(run_dir: Path, record: RunRecord, calibration: dict | None, engine: str, *, cache_dir=None,
                  device=None) -> tuple[Path | None, str | None]:
    """-> (the fresh ONNX export to run, None), or (None, why the torch engine runs instead).
    `engine`: one of ENGINES (the caller checked); "onnx" raises a GraftError when the export
    cannot serve."""
    if engine == "torch":
        return None, "engine='torch' asked for"
    onnx, why_not = None, ("a feature cache needs the torch engine" if cache_dir is not None else
                           "the onnx engine runs on the CPU" if device not in (None, "cpu") else None)
    if why_not is None:
        onnx, why_not = fresh_onnx_export(run_dir, record, calibration)
    if engine == "onnx" and onnx is None:
        raise GraftError(f"cannot use the ONNX engine for {run_dir}: {why_not}")
    return onnx, why_not


def fresh_onnx_export(run_dir: Path, record: RunRecord, calibration: dict | None):
    """-> (path of RUN/model.onnx, None) when it is a graft export of exactly this model (and
    calibration) and onnxruntime is installed, else (None, why not)."""
    path = run_dir / ONNX_MODEL
    if not path.is_file():
        return None, f"no {ONNX_MODEL} (graft export {run_dir} --format onnx)"
    if importlib.util.find_spec("onnxruntime") is None:
        return None, "onnxruntime is not installed"
    try:
        export = json.loads((run_dir / EXPORT_JSON).read_text())
        entry = export["files"][ONNX_MODEL]
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"{EXPORT_JSON} does not describe {ONNX_MODEL}"
    cal_sha = sha256_file(run_dir / CALIBRATION_JSON) if calibration is not None else None
    recorded = json.loads(json.dumps(record.preprocessing.to_json()))  # as export.json holds it: lists
    checks = [
        (export.get("format") == EXPORT_FORMAT, "the export is of an older graft"),
        (export.get("classes") == list(record.classes) and export.get("preprocessing") == recorded,
         "the export is of another model"),
        (export.get("model_sha256") == sha256_file(run_dir / MODEL_TENSORS), "the model was retrained since the export"),
        (((export.get("calibration") or {}).get("sha256")) == cal_sha, "the calibration changed since the export"),
        (entry.get("sha256") == sha256_file(path), f"{ONNX_MODEL} was changed since graft wrote it"),
    ]
    for ok, why in checks:
        if not ok:
            return None, why
    return path, None


class OnnxEngine:
    """The exported graph on onnxruntime: uint8 NHWC crops in, logits (and novelty) out."""

    name = "onnx"
    device = "cpu"

    def __init__(self, path: Path, *, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        # Waiting threads sleep rather than spin: a shared or busy machine (a server decoding
        # uploads beside its forward passes) loses more to spinning than an idle one gains.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]

    def run(self, crops: np.ndarray):
        got = dict(zip(self.outputs, self.session.run(None, {"image": np.ascontiguousarray(crops)})))
        novelty = got.get("novelty")
        return got["logits"].astype(np.float64), None if novelty is None else novelty.astype(np.float64)

    def open_cache(self, cache_dir, record):  # pragma: no cover - the onnx engine is not chosen with a cache
        raise GraftError("a feature cache needs the torch engine")


class TorchEngine:
    """The run's network rebuilt in torch (graft.run.store.load_run), and its novelty check."""

    name = "torch"

    def __init__(self, run_dir: Path, *, weights, device, threads: int | None = None):
        import torch

        from graft.run.store import load_run

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = str(torch.device(device or "cpu"))
        self.model = load_run(run_dir, weights=weights).to(self.device).eval()
        self.novelty = None  # graft.use.calibrate.Novelty, set by the Predictor when the run has one

    def run(self, crops: np.ndarray):
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device).permute(0, 3, 1, 2)
            x = self.model.preprocessing.normalize(x).contiguous(memory_format=torch.channels_last)
            return self._scores(self.model.features(x))

    def from_features(self, feats: np.ndarray):
        with self.torch.inference_mode():
            return self._scores(self.torch.from_numpy(np.ascontiguousarray(feats)).to(self.device))

    def _scores(self, feats):
        logits = self.model.head(feats).double().cpu().numpy()
        novelty = self.novelty.distance(feats.cpu()) if self.novelty is not None else None
        return logits, novelty

    def open_cache(self, cache_dir, record):
        if record.backbone.stored or self.model.cut is not None:
            return None  # only an untouched pretrained backbone's features are in the cache
        from graft.cache import cache_root
        from graft.features.concat import JoinedCache

        return JoinedCache(self.model.backbone.parts, cache_root(cache_dir))  # each part's own namespace

