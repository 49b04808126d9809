"""The run folder graft train writes and every other command reads: its file names (files.py),
model.json as a typed record (record.py), saving and loading the model (store.py), the run's
photos and validation predictions (photos.py), and what `--out` may be (guard.py)."""

from graft.run.files import CALIBRATION_JSON, CHECKPOINT, EXPORT_JSON, IN_PROGRESS, LOG_CSV, TENSORBOARD, VAL_PREDICTIONS

__all__ = ["CALIBRATION_JSON", "CHECKPOINT", "EXPORT_JSON", "IN_PROGRESS", "LOG_CSV", "TENSORBOARD", "VAL_PREDICTIONS"]
