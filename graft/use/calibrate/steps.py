"""`calibrate_run`: from a run and the photos it was trained on to RUN/calibration.json, step by
step (the photos scored, those to fit on chosen, T fitted, the novelty reference stored, the
thresholds chosen, the validation photos scored once as new photos, the record written)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from graft.errors import GraftError
from graft.use.calibrate.fit_photos import FitPhotos, ScoredPhotos, fit_photos, score_photos
from graft.use.calibrate.novelty import TrainingReference, reference_rows
from graft.use.calibrate.store import FORMAT, model_digest, write_calibration, write_reference
from graft.use.calibrate.temperature import fit_temperature, nll, softmax
from graft.use.calibrate.thresholds import (KEEP, accuracy_coverage_curve, choose_thresholds, keep_range,
                                            keep_table, novelty_table, refusals_allowed, thin_curve)

log = logging.getLogger("graft")


def calibrate_run(run_dir, photos_val=None, target_accuracy: float = 0.99, *, keep: float = KEEP,
                  novelty: bool = True, novelty_quantile: float | None = None, max_reference: int = 4096,
                  cache_dir=None, weights=None, batch_size: int = 32, workers: int | None = None,
                  progress: bool = False) -> dict:
    """Fit T, the confidence threshold and the novelty threshold; write RUN/calibration.json.

    `photos_val`: the PHOTOS folder the run was trained on; its train/val split is found again
    exactly as training drew it (graft.run.photos.photos_split). Everything is fitted on photos of the
    run's classes that the model was NOT fitted on: out-of-fold predictions of the training
    photos for frozen-backbone runs (their features come from the cache training filled), the
    photos fine-tuning held out for early stopping for fine-tuned ones (fit_photos). The
    thresholds keep at least `keep` of those photos (choose_thresholds); the trade-off tables
    say what other choices would keep. The validation photos are then scored once, as new
    photos, for the reported figure (`val_unknown`, `val_kept`): nothing is chosen on them.
    Returns what calibration.json holds.
    """
    from graft.run.store import read_record

    run_dir = Path(run_dir)
    record = read_record(run_dir)
    _check_settings(run_dir, photos_val, target_accuracy, keep, novelty_quantile)
    target_accuracy = float(target_accuracy)
    photos = score_photos(run_dir, record, photos_val, cache_dir=cache_dir, weights=weights, batch_size=batch_size,
                          workers=workers, progress=progress)
    fit = fit_photos(run_dir, record, photos)
    temperature = fit_temperature(fit.logits, fit.labels)
    probs = softmax(fit.logits, temperature)
    confidence, correct = probs.max(1), probs.argmax(1) == fit.labels
    reference = (TrainingReference(photos.feats, reference_rows(photos.ok, photos.n_train, max_reference))
                 if novelty else None)
    nov_fit = reference.of(fit.rows) if novelty else None
    choice = choose_thresholds(confidence, correct, nov_fit, keep=keep, target_accuracy=target_accuracy,
                               novelty_quantile=novelty_quantile)
    _say_when_keep_stopped_short(choice, keep, target_accuracy)
    warnings = [fit.warning] if fit.warning else []
    if len(fit.rows) < 30:
        warnings.append(f"only {len(fit.rows)} photos to fit the thresholds on: they are rough estimates")
    warnings += _too_few_for_keep(len(fit.rows), keep, choice["assurance"])
    result = {
        "format": FORMAT, "classes": list(record.classes), "model_sha256": model_digest(run_dir),
        "temperature": temperature, "threshold": choice["threshold"], "keep": float(keep),
        "target_accuracy": target_accuracy, "target_reached": choice["reached"],
        "fit": _fit_summary(fit, temperature, correct, choice),
        "curve": thin_curve(accuracy_coverage_curve(confidence, correct), choice["threshold"]),
        "keep_table": keep_table(confidence, correct, nov_fit, keep=keep, target_accuracy=target_accuracy,
                                 novelty_quantile=novelty_quantile),
        "novelty": _novelty_entry(run_dir, reference, nov_fit, choice) if novelty else None,
        "val_unknown": None, "val_kept": None,  # the reported figure, when there are validation photos:
        **_validation_figure(photos, temperature, choice, reference),
        "photos": str(Path(photos_val)), "final": photos.final, "skipped": photos.skipped, "warnings": warnings,
    }
    write_calibration(run_dir, result)
    for w in warnings:
        log.warning("%s", w)
    return result



def _check_settings(run_dir: Path, photos, target_accuracy, keep, novelty_quantile) -> None:
    if photos is None:
        raise GraftError(f"calibration needs the photos {run_dir} was trained on: "
                         f"graft calibrate {run_dir} PHOTOS")
    if not 0.0 < float(target_accuracy) <= 1.0:
        raise GraftError(f"--target-accuracy must be in (0, 1], got {target_accuracy}")
    if not 0.0 <= float(keep) <= 1.0:
        raise GraftError(f"--keep must be a share between 0 and 1 (e.g. 0.95), got {keep}")
    if novelty_quantile is not None and not 0.0 < float(novelty_quantile) <= 1.0:
        raise GraftError(f"novelty quantile must be in (0, 1], got {novelty_quantile}")


def _too_few_for_keep(n: int, keep: float, assurance: float) -> list[str]:
    """Why --keep cannot be promised on new photos: even refusing none of n photos leaves the
    share of new ones kept below `keep` more than 1 - assurance of the time (keep ** n > 1 - assurance)."""
    if keep >= 1.0 or refusals_allowed(n, keep, assurance) >= 0:
        return []
    need = math.ceil(math.log(1.0 - assurance) / math.log(keep)) if keep > 0 else 1
    return [f"--keep {keep:g} can be promised on new photos ({assurance:g} of the time) from {need} photos to fit on; "
            f"with {n}, the confidence check refuses none of them and the novelty check only photos farther than "
            "every training photo, which may still refuse more than asked: add photos or lower --keep"]


def _say_when_keep_stopped_short(choice: dict, keep, target_accuracy: float) -> None:
    if not choice["reached"] and choice["limited_by"] == "keep":
        log.info("the confidence threshold stops where the two checks together would keep less than %.1f%% of the "
                 "photos fitted on, what --keep %g needs to hold on new photos %g of the time; the kept ones are "
                 "%.3f right (target %g)", 100 * choice["keep_with_margin"], keep, choice["assurance"],
                 choice["accuracy"], target_accuracy)


def _novelty_entry(run_dir: Path, reference: TrainingReference, novelty: np.ndarray, choice: dict) -> dict:
    """calibration.json's `novelty`, its reference features written beside it."""
    return {**reference.summary(), **write_reference(run_dir, reference.stored),
            "threshold": choice["novelty_threshold"], "quantile": choice["novelty_quantile"],
            "curve": novelty_table(novelty)}


def _fit_summary(fit: FitPhotos, temperature: float, correct: np.ndarray, choice: dict) -> dict:
    """calibration.json's `fit`: the photos fitted on, and what T and the thresholds do to them."""
    return {
        "photos": fit.source,  # "training" (out-of-fold), "inner" (fine-tuning's) or "validation"
        "how": fit.how,
        "n": len(fit.rows),
        "accuracy": round(float(correct.mean()), 6),
        "nll": {"before": round(nll(fit.logits, fit.labels), 6),
                "after": round(nll(fit.logits, fit.labels, temperature), 6)},
        "kept": round(choice["kept"], 6),
        "accuracy_kept": round(choice["accuracy"], 6),
        "refused": {k: round(v, 6) for k, v in choice["refused"].items()},
        "keep_with_margin": choice["keep_with_margin"],  # the share of these photos the thresholds must keep
        "assurance": choice["assurance"],  # how often new photos are then kept at least `keep` of the time
        "limited_by": choice["limited_by"],
    }


def _validation_figure(photos: ScoredPhotos, temperature: float, choice: dict,
                       reference: TrainingReference | None) -> dict:
    """The reported figure: the validation photos scored once, as new photos (`val_unknown`,
    `val_kept`); nothing when there are none (--final, or a split without them)."""
    rows = photos.val_rows
    if not len(rows):
        return {}
    p = softmax(photos.logits(rows), temperature)
    refused = p.max(1) < choice["threshold"]
    far = reference.of(rows) > choice["novelty_threshold"] if reference is not None else np.zeros(len(rows), bool)
    kept, right = ~(refused | far), p.argmax(1) == photos.labels(rows)
    return {
        "val_unknown": {"n_val": int(len(rows)), "confidence": int(refused.sum()),
                        "novelty": int(far.sum()) if reference is not None else None, "either": int((~kept).sum())},
        "val_kept": {"n": int(len(rows)), "kept": round(float(kept.mean()), 6),
                     "accuracy": round(float(right.mean()), 6),
                     "accuracy_kept": round(float(right[kept].mean()), 6) if kept.any() else None,
                     "kept_and_right": round(float((kept & right).mean()), 6),
                     "kept_range": keep_range(int(kept.sum()), int(len(rows)))},
    }
