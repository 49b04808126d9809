"""Every file graft writes into a run folder, named once.

`graft train` writes the model (MODEL_JSON last: it marks the model complete), the validation
predictions and METRICS_JSON (last: it marks the run complete), and, while it fine-tunes, the
in-progress files. The other commands add theirs beside them: calibrate, export, check --apply-to,
report. (The exported client, `predict_onnx.py` once copied, imports nothing of graft and keeps
its own literals.)
"""

from __future__ import annotations

# graft train (graft.run.store, graft.recipe.run_folder)
MODEL_JSON = "model.json"  # the run's description: graft.run.record.RunRecord
MODEL_TENSORS = "model.safetensors"  # its trained tensors
VAL_PREDICTIONS = "val_predictions.npz"  # the validation photos' probabilities as training scored them
METRICS_JSON = "metrics.json"  # validation figures, what was trained and how, timings
REPORT_HTML = "report.html"  # graft.report's page (graft train, graft report, check --apply-to)

# written as training goes, before a model is (graft.finetune.loop, graft.recipe.log)
CHECKPOINT = "checkpoint.pt"
LOG_CSV = "log.csv"
TENSORBOARD = "tensorboard"  # a folder of event files
# What a run killed before its model leaves (and --resume continues from): not the user's files.
IN_PROGRESS = frozenset({CHECKPOINT, LOG_CSV, TENSORBOARD})
TRAIN_LOCK = ".graft-train.lock"  # held (flock) while a graft train writes the run (graft.run.guard.lock_run)

# graft calibrate (graft.use.calibrate): the thresholds, and the novelty check's reference features
CALIBRATION_JSON = "calibration.json"
CALIBRATION_REFERENCE = "calibration.safetensors"

# graft export (graft.use.export): the files, and its record of what it made from which model
EXPORT_JSON = "export.json"
ONNX_MODEL = "model.onnx"
TORCHSCRIPT_MODEL = "model.torchscript.pt"
ONNX_CLIENT = "predict_onnx.py"  # graft.use.export_client, copied beside an ONNX export
# the exported files' interface and metadata (1 took a normalised float32 NCHW batch; 2: uint8 NHWC
# in, logits and novelty out): what export writes and the Predictor's ONNX engine runs
EXPORT_FORMAT = 2

# graft check PHOTOS --apply-to RUN (graft.cli.check): its findings, which the report shows
CHECK_JSON = "check.json"
