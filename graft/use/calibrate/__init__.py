"""Calibrating a run, so that predictions can say "neither": `unknown` for photos unlike every class.

`graft calibrate RUN PHOTOS` writes `RUN/calibration.json` (+ `RUN/calibration.safetensors`),
everything fitted on photos of the run's classes that the model was NOT fitted on: out-of-fold
predictions of the TRAINING photos (stratified k-fold on the cached features, the run's head
recipe refitted without each fold; graft.heads.folds, graft.heads.probe, graft.heads.search), or for a
fine-tuned run the training photos fine-tuning held out for early stopping. Fitted on a few
dozen validation photos instead (what graft did before), the thresholds refused one real test
photo in eight on a 12-class flower set (issue 11); and those photos could not then be the
independent check they are now.

* **temperature** T: the logits are divided by T before the softmax, T fitted by minimising the
  negative log-likelihood (temperature scaling, Guo et al. 2017), so that "0.9" means right about
  9 times in 10. A weak prior on log T (sd 1) keeps T finite when the photos are all classified
  right with a wide margin, where plain NLL would send T to 0 and every probability to 1.000.
* **novelty threshold**: a softmax must always pick one of its classes, and on a photo of
  something else it is often *more* confident than on real ones (a 2-class head is sure a green
  triangle is "very blue"), so confidence alone cannot say "neither". The novelty of a photo is
  the cosine distance from its backbone features to the k-th nearest training photo's (deep
  nearest neighbours, Sun et al. 2022; each training photo left out of its own neighbours);
  the threshold is an order statistic of the training photos' novelty (it refuses 1% of them
  by default, NOVELTY_QUANTILE), its refusals counted in the bound below.
* **confidence threshold** tau on the temperature-scaled top probability: the smallest tau that
  brings the kept photos to `target_accuracy`, but never so high that the two checks together
  could keep less than `keep` (default 0.95) of NEW photos like these: they may refuse only as
  many of the n photos as an exact binomial bound allows, so that nine times in ten (ASSURANCE)
  the share kept of new photos is at least `keep` (thresholds.refusals_allowed). Keeping `keep`
  plus one standard error of the photos fitted on, as graft did, kept 0.935 of the ants/bees
  validation photos (issue 20); the plain conformal quantile would keep `keep` only on average.

calibration.json records the trade-off (`keep_table`: what each share kept would cost in
thresholds and buy in accuracy; `novelty.curve`: the share of in-class photos each novelty
threshold refuses) and then, as the reported figure, what the rule does to the validation
photos, scored once as new photos and never used to choose (`val_unknown`, `val_kept`).

A prediction (graft.use.reject) is `unknown` when its confidence is below tau or its novelty above
the threshold; it still lists the top-k classes with their (temperature-scaled) probabilities.

The jobs, one module each: `temperature` (T), `thresholds` (the confidence and novelty
thresholds and their tables), `novelty` (the distance to the training photos), `out_of_fold`
(the training photos' out-of-fold logits), `fit_photos` (which photos to fit on), `store`
(calibration.json and calibration.safetensors, written and read back checked) and `steps`
(`calibrate_run`, the steps in order). Nothing here imports torch until it fits or computes
with tensors: reading a calibration and applying it (graft.use.reject) needs only numpy.
"""

from graft.run.files import CALIBRATION_JSON, CALIBRATION_REFERENCE
from graft.use.calibrate.fit_photos import FitPhotos, ScoredPhotos, fit_photos, score_photos
from graft.use.calibrate.novelty import Novelty, TrainingReference, knn_distance, reference_k, reference_rows, unit_rows
from graft.use.calibrate.out_of_fold import FOLDS, out_of_fold_logits
from graft.use.calibrate.steps import calibrate_run
from graft.use.calibrate.store import FORMAT, load_calibration, load_novelty, model_digest, write_reference
from graft.use.calibrate.temperature import fit_temperature, nll, softmax
from graft.use.calibrate.thresholds import (ASSURANCE, KEEP, KEEP_GRID, MAX_CURVE_POINTS, NOVELTY_QUANTILE,
                                            REFUSED_GRID, accuracy_coverage_curve, choose_threshold,
                                            choose_thresholds, keep_range, keep_table, keep_with_margin,
                                            novelty_table, refusals_allowed, thin_curve)

__all__ = [
    "ASSURANCE", "CALIBRATION_JSON", "CALIBRATION_REFERENCE", "FOLDS", "FORMAT", "KEEP", "KEEP_GRID", "MAX_CURVE_POINTS",
    "NOVELTY_QUANTILE", "REFUSED_GRID", "FitPhotos", "Novelty", "ScoredPhotos", "TrainingReference",
    "accuracy_coverage_curve", "calibrate_run", "choose_threshold", "choose_thresholds", "fit_photos",
    "fit_temperature", "keep_range", "keep_table", "keep_with_margin", "knn_distance", "load_calibration", "load_novelty",
    "model_digest", "nll", "novelty_table", "out_of_fold_logits", "reference_k", "reference_rows", "refusals_allowed",
    "score_photos", "softmax", "thin_curve", "unit_rows", "write_reference",
]
