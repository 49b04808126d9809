"""A run's photos: its train/val split found again as training drew it, and the validation
photos' predictions as training scored them (RUN/val_predictions.npz, so the report needs
neither the photos nor a forward pass)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from graft._util.atomic import atomic_path
from graft.errors import GraftError
from graft.run.files import VAL_PREDICTIONS
from graft.run.record import RunRecord, TrainingRecord

if TYPE_CHECKING:
    from graft.data import Dataset


def photos_split(record: RunRecord, photos, *, cache_dir=None) -> Dataset:
    """The run's train/val split of `photos` found again exactly as training drew it: the same
    content-hash share (model.json's training.val_split), or PHOTOS/train + PHOTOS/val. A plain
    class folder given to a run trained on train/ + val/ is all validation. -> graft.data.Dataset
    with the run's classes (a GraftError if the photos have others). `cache_dir`: where the
    photos' digest index lives (graft.data.digests; default: graft's cache)."""
    from graft.data import Dataset, is_label_file, scan_class_folders, scan_photos

    photos = Path(photos).expanduser()
    training = record.training or TrainingRecord()
    classes = list(record.classes)
    split_layout = (photos / "train").is_dir() and (photos / "val").is_dir()
    if training.layout == "train/val" and not split_layout and not is_label_file(photos):
        _, val, skipped = scan_class_folders(photos, classes=classes, cache_dir=cache_dir)
        return Dataset(photos, classes, [], val, skipped)
    data = scan_photos(photos, val_split=float(training.val_split), cache_dir=cache_dir)
    if data.classes != classes:
        raise GraftError(f"{photos} has classes {', '.join(data.classes)}; the run was trained on "
                         f"{', '.join(classes)}: give the photos the run was trained on")
    return data


def save_val_predictions(run_dir, paths, labels, probabilities) -> None:
    """RUN/val_predictions.npz: each validation photo's path, true label and class probabilities
    as training scored them (a row of NaN for a photo that could not be read)."""
    with atomic_path(Path(run_dir) / VAL_PREDICTIONS) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, paths=np.array([str(p) for p in paths], dtype=str),
                            labels=np.asarray(labels, dtype=np.int64),
                            probabilities=np.asarray(probabilities, dtype=np.float32))


def read_val_predictions(run_dir) -> dict | None:
    """{"paths", "labels", "probabilities"} as save_val_predictions wrote them; None for a run
    trained before graft kept them."""
    path = Path(run_dir) / VAL_PREDICTIONS
    try:
        with np.load(path, allow_pickle=False) as z:
            return {"paths": [str(p) for p in z["paths"]], "labels": z["labels"],
                    "probabilities": z["probabilities"]}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError) as e:
        raise GraftError(f"cannot read {path}: {e}") from None
