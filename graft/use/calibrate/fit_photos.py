"""The photos a calibration is fitted on, never ones the model was fitted on: the run's photos
found again as training split them and scored by its network (`score_photos`), then, of those,
the out-of-fold predictions of the training photos (frozen-backbone runs), the photos fine-tuning
held out for early stopping (fine-tuned runs), or with a warning the validation photos, as
graft did before (`fit_photos`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graft.errors import GraftError
from graft.run.record import RunRecord, TrainingRecord
from graft.use.calibrate.out_of_fold import out_of_fold_logits


@dataclass(frozen=True)
class ScoredPhotos:
    """The run's photos, the training ones first (`n_train`; with --final the validation ones
    too), their features (`ok`: readable) and the run's head, to score any of them."""

    samples: list
    n_train: int
    feats: np.ndarray
    ok: np.ndarray
    head: object
    skipped: list
    final: bool

    @property
    def train_rows(self) -> np.ndarray:
        return np.flatnonzero(self.ok[:self.n_train])

    @property
    def val_rows(self) -> np.ndarray:
        return self.n_train + np.flatnonzero(self.ok[self.n_train:])

    def labels(self, rows) -> np.ndarray:
        return np.array([self.samples[i].label for i in rows], dtype=int)

    def logits(self, rows) -> np.ndarray:
        """The run's head on these rows' features, float64."""
        import torch

        with torch.no_grad():
            return self.head(torch.from_numpy(np.ascontiguousarray(self.feats[rows]))).double().numpy()


def score_photos(run_dir: Path, record: RunRecord, photos, *, cache_dir=None, weights=None, batch_size: int = 32,
                 workers: int | None = None, progress: bool = False) -> ScoredPhotos:
    """The run's train/val split of `photos` found again exactly as training drew it
    (graft.run.photos.photos_split) and the features of every photo (graft.use.features)."""
    from graft.run.photos import photos_split
    from graft.use.features import run_features

    data = photos_split(record, photos, cache_dir=cache_dir)
    train, val, skipped = list(data.train), list(data.val), list(data.skipped)
    final = record.training is not None and record.training.final
    if final:  # --final: the validation photos were trained on; nothing is held out
        train, val = train + val, []
    if not train:
        raise GraftError(f"no training photos of this run found in {photos}: give the photos it was trained on")
    samples = train + val
    feats, ok, head, more_skipped = run_features(run_dir, samples, cache_dir=cache_dir, weights=weights,
                                                 batch_size=batch_size, workers=workers, progress=progress)
    return ScoredPhotos(samples, len(train), feats, ok, head, skipped + more_skipped, final)


@dataclass(frozen=True)
class FitPhotos:
    """The photos the thresholds are fitted on: rows of the features, their labels, logits of
    a model that was not fitted on them, and how they were found (in words, for the record)."""

    rows: np.ndarray
    labels: np.ndarray
    logits: np.ndarray
    source: str  # "training" (out-of-fold), "inner" (fine-tuning's) or "validation"
    how: str
    warning: str | None = None  # why the validation photos had to serve, when they did


def fit_photos(run_dir: Path, record: RunRecord, photos: ScoredPhotos) -> FitPhotos:
    """Out-of-fold predictions of the training photos (frozen-backbone runs); the photos
    fine-tuning held out for early stopping (fine-tuned runs); else, with a warning, the
    validation photos (what graft did before: a fine-tuned run that does not record its inner
    split, or a class with one training photo)."""
    training = record.training or TrainingRecord()
    if not record.backbone.stored:
        fit, why = _out_of_fold(record, training, photos)
    elif training.inner_split is not None and training.finetune is not None:
        fit, why = _held_out_by_fine_tuning(record, training, photos)
    else:
        fit, why = None, "this fine-tuned run does not record its inner split (trained by an earlier graft)"
    if fit is not None:
        return fit
    val_rows = photos.val_rows
    if not len(val_rows):
        raise GraftError(f"cannot calibrate {run_dir}: {why}, and there are no validation photos to fall back on")
    return FitPhotos(val_rows, photos.labels(val_rows), photos.logits(val_rows), "validation",
                     f"the {len(val_rows)} validation photos ({why})",
                     warning=f"thresholds fitted on the validation photos, as graft did before: {why}; the "
                             f"validation figure is then not an independent one")


def _out_of_fold(record: RunRecord, training: TrainingRecord, photos: ScoredPhotos) -> tuple[FitPhotos | None, str]:
    """The training photos, each scored by the head recipe refitted without it; (None, why not)."""
    from graft.heads.folds import NotEnoughPhotos

    rows = photos.train_rows
    views = (record.augmentation.views if record.augmentation is not None else None) or 0
    try:
        logits, how = out_of_fold_logits(len(record.classes), training.head, photos.feats[rows], photos.labels(rows),
                                         [photos.samples[i].digest for i in rows], views=views)
    except NotEnoughPhotos:
        return None, "a class has a single readable training photo: nothing to cross-validate"
    return FitPhotos(rows, photos.labels(rows), logits, "training",
                     f"out-of-fold predictions of the {len(rows)} training photos ({how})"), ""


def _held_out_by_fine_tuning(record: RunRecord, training: TrainingRecord,
                             photos: ScoredPhotos) -> tuple[FitPhotos | None, str]:
    """The training photos fine-tuning's inner split held out for early stopping, found again
    (graft.data.folder.inner_split) and scored by the run's network; (None, why not)."""
    from graft.data import Dataset
    from graft.data.folder import inner_split

    train = photos.samples[:photos.n_train]
    share = float(training.inner_split)
    held = inner_split(Dataset(Path("."), list(record.classes), list(train), []), share, training.finetune.seed).val
    at = {id(s): i for i, s in enumerate(train)}
    rows = np.array([at[id(s)] for s in held if photos.ok[at[id(s)]]], dtype=int)
    if not len(rows):
        return None, "fine-tuning held out no training photo"
    return FitPhotos(rows, photos.labels(rows), photos.logits(rows), "inner",
                     f"the {len(rows)} training photos fine-tuning held out for early stopping "
                     f"(inner split {share:g}): the network never trained on them"), ""
