"""Calibrating a run, so that predictions can say "neither": `unknown` for photos unlike every class.

`graft calibrate RUN PHOTOS` looks at the run's validation photos (the very split training held
out) and its training photos, and writes `RUN/calibration.json` (+ `RUN/calibration.safetensors`):

* **temperature** T: the logits are divided by T before the softmax, T fitted by minimising the
  validation negative log-likelihood (temperature scaling, Guo et al. 2017), so that "0.9" means
  right about 9 times in 10. A weak prior on log T (sd 1) keeps T finite when the validation
  photos are all classified right with a wide margin, where plain NLL would send T to 0 and every
  probability to 1.000.
* **confidence threshold** tau on the temperature-scaled top probability: the smallest tau such
  that the validation photos with confidence >= tau reach `target_accuracy` (0 when all of them
  already do); the whole accuracy/coverage curve is recorded.
* **novelty threshold**: a softmax must always pick one of its classes, and on a photo of
  something else it is often *more* confident than on real ones (a 2-class head is sure a green
  triangle is "very blue"), so confidence alone cannot say "neither". The novelty of a photo is
  the cosine distance from its backbone features to the k-th nearest training photo's (deep
  nearest neighbours, Sun et al. 2022); the threshold is the `novelty_quantile` of the same
  distance for the training + validation photos themselves (each left out of its own
  neighbours), and the reference features are stored beside the run.

A prediction (graft.inference) is `unknown` when its confidence is below tau or its novelty above
the threshold; it still lists the top-k classes with their (temperature-scaled) probabilities.
calibration.json also says how many validation photos each check would call `unknown`
(`val_unknown`), each photo left out of its own neighbours as a new one would be.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ._atomic import atomic_path, read_json, write_json
from ._digest import sha256_file
from .errors import GraftError
from .run import CALIBRATION_JSON

if TYPE_CHECKING:  # torch is imported by the functions that fit or compute with tensors: using a
    import torch  # calibration on an exported model's outputs (load_calibration, softmax) needs none

log = logging.getLogger("graft")

REFERENCE_FILE = "calibration.safetensors"
FORMAT = 1
MAX_CURVE_POINTS = 200


# --- temperature scaling ---------------------------------------------------------------------

def fit_temperature(logits, labels, *, prior_sd: float | None = 1.0, max_iter: int = 100) -> float:
    """The temperature T > 0 minimising the NLL of softmax(logits / T) on `labels`.

    Optimised over log T with L-BFGS, in float64. `prior_sd`: sd of a Gaussian prior on log T
    centred on 0 (T = 1), i.e. a MAP fit; negligible with hundreds of photos, it keeps T finite
    when the photos are perfectly separated. None: plain NLL. T is clamped to [0.01, 100].
    """
    import torch

    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if z.ndim != 2 or y.ndim != 1 or len(z) != len(y):
        raise GraftError(f"fit_temperature needs logits (N, C) and labels (N,), got {tuple(z.shape)} and {tuple(y.shape)}")
    if not len(y):
        raise GraftError("cannot fit a temperature on zero photos")
    if int(y.min()) < 0 or int(y.max()) >= z.shape[1]:
        raise GraftError(f"labels must lie in 0..{z.shape[1] - 1}")
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)
    lo, hi = math.log(1e-2), math.log(1e2)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.clamp(lo, hi).exp(), y, reduction="sum")
        if prior_sd:
            loss = loss + 0.5 * (log_t / prior_sd) ** 2
        loss.backward()
        return loss

    opt.step(closure)
    return float(math.exp(min(hi, max(lo, float(log_t.detach())))))


def nll(logits, labels, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of softmax(logits / T)."""
    import torch

    z = torch.as_tensor(np.asarray(logits, dtype=np.float64)) / temperature
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    return float(torch.nn.functional.cross_entropy(z, y))


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# --- the confidence threshold ----------------------------------------------------------------

def accuracy_coverage_curve(confidence, correct) -> list[dict]:
    """For each distinct confidence c (highest first): coverage and accuracy of {conf >= c}."""
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    if conf.shape != ok.shape or conf.ndim != 1:
        raise GraftError("confidence and correct must be 1-D and of the same length")
    order = np.argsort(-conf, kind="stable")
    conf, ok = conf[order], ok[order]
    n = len(conf)
    hits = np.cumsum(ok)
    curve = []
    for j in range(n):  # the last of each run of equal confidences: the set {conf >= c}
        if j + 1 < n and conf[j + 1] == conf[j]:
            continue
        curve.append({"threshold": float(conf[j]), "coverage": (j + 1) / n, "accuracy": float(hits[j] / (j + 1))})
    return curve


def choose_threshold(confidence, correct, target_accuracy: float) -> dict:
    """The smallest tau such that accuracy over {confidence >= tau} reaches `target_accuracy`.

    0.0 when every photo together already reaches it (nothing needs refusing); else the lowest
    confidence kept. When no tau reaches the target, the tau of the best accuracy reachable (the
    smallest such tau). Returns {threshold, accuracy, coverage, reached}.
    """
    curve = accuracy_coverage_curve(confidence, correct)
    if not curve:
        raise GraftError("cannot choose a threshold on zero photos")
    eps = 1e-12
    full = curve[-1]
    if full["accuracy"] >= target_accuracy - eps:
        return {"threshold": 0.0, "accuracy": full["accuracy"], "coverage": 1.0, "reached": True}
    passing = [p for p in curve if p["accuracy"] >= target_accuracy - eps]
    if passing:
        best, reached = passing[-1], True  # lowest threshold: the most photos kept
    else:
        top = max(p["accuracy"] for p in curve)
        best, reached = [p for p in curve if p["accuracy"] >= top - eps][-1], False
    return {"threshold": best["threshold"], "accuracy": best["accuracy"], "coverage": best["coverage"],
            "reached": reached}


# --- novelty: distance to the training photos in feature space -------------------------------

def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def knn_distance(queries: torch.Tensor, reference: torch.Tensor, k: int, *, leave_one_out: bool = False,
                 chunk: int = 1024) -> np.ndarray:
    """Cosine distance from each query to its k-th nearest reference row (rows unit-normalised).

    `leave_one_out`: queries ARE the reference rows, each excluded from its own neighbours.
    """
    import torch

    out = []
    k_eff = min(k, reference.shape[0] - (1 if leave_one_out else 0))
    if k_eff < 1:
        raise GraftError("novelty needs at least two reference photos")
    for start in range(0, len(queries), chunk):
        sims = queries[start:start + chunk] @ reference.T
        if leave_one_out:
            rows = torch.arange(sims.shape[0])
            sims[rows, rows + start] = -math.inf
        out.append(1.0 - sims.topk(k_eff, dim=1).values[:, -1])
    return torch.cat(out).double().numpy() if out else np.zeros(0)


class Novelty:
    """The stored reference features and threshold: `distance(features)`, `threshold`."""

    def __init__(self, reference: torch.Tensor, k: int, threshold: float):
        self.reference = _unit(reference.float())
        self.k = k
        self.threshold = threshold

    def distance(self, features: torch.Tensor) -> np.ndarray:
        return knn_distance(_unit(features.float()), self.reference, self.k)


def _reference_k(n: int) -> int:
    return max(1, min(10, n // 100))


# --- calibrating a run -----------------------------------------------------------------------

def calibrate_run(run_dir, photos_val=None, target_accuracy: float = 0.99, *, novelty: bool = True,
                  novelty_quantile: float = 0.99, max_reference: int = 4096, cache_dir=None, weights=None,
                  batch_size: int = 32, workers: int | None = None, progress: bool = False) -> dict:
    """Fit T, the confidence threshold and the novelty threshold; write RUN/calibration.json.

    `photos_val`: the PHOTOS folder the run was trained on. Its validation split is found again
    exactly as training drew it (the same `val_split` on content hashes, or PHOTOS/val); a plain
    class folder given to a run trained on PHOTOS/train + PHOTOS/val is used whole as validation.
    Frozen-backbone runs take the features from the cache training filled (no forward pass).
    Returns what calibration.json holds.
    """
    import torch

    from .run import photos_split, read_run_meta, run_features

    run_dir = Path(run_dir)
    meta = read_run_meta(run_dir)
    if photos_val is None:
        raise GraftError(f"calibration needs the photos {run_dir} was trained on: "
                         f"graft calibrate {run_dir} PHOTOS")
    if not 0.0 < float(target_accuracy) <= 1.0:
        raise GraftError(f"--target-accuracy must be in (0, 1], got {target_accuracy}")
    if not 0.0 < float(novelty_quantile) <= 1.0:
        raise GraftError(f"novelty quantile must be in (0, 1], got {novelty_quantile}")
    classes = list(meta["classes"])
    data = photos_split(meta, photos_val, cache_dir=cache_dir)
    val, train, skipped = data.val, data.train, list(data.skipped)
    if not val:
        raise GraftError(f"no validation photos found in {photos_val} for this run; calibration needs "
                         f"photos the run did not train on")
    reference = _subsample(train + val, max_reference) if novelty else []
    val_ids = {id(s) for s in val}
    samples = list(val) + [s for s in reference if id(s) not in val_ids]
    feats, ok, head, more_skipped = run_features(run_dir, samples, cache_dir=cache_dir, weights=weights,
                                                 batch_size=batch_size, workers=workers, progress=progress)
    skipped += more_skipped
    n_val = len(val)
    val_ok = np.flatnonzero(ok[:n_val])
    if not len(val_ok):
        raise GraftError("none of the validation photos could be read")
    with torch.no_grad():
        logits = head(torch.from_numpy(feats[val_ok])).double().numpy()
    labels = np.array([val[i].label for i in val_ok])
    temperature = fit_temperature(logits, labels)
    probs = softmax(logits, temperature)
    confidence, correct = probs.max(1), probs.argmax(1) == labels
    choice = choose_threshold(confidence, correct, float(target_accuracy))
    curve = _thin(accuracy_coverage_curve(confidence, correct), choice["threshold"])

    warnings = []
    if len(val_ok) < 30:
        warnings.append(f"only {len(val_ok)} validation photos: the threshold is a rough estimate")
    if not choice["reached"]:
        warnings.append(f"no confidence threshold reaches accuracy {target_accuracy:g} on the validation "
                        f"photos; the best reachable is {choice['accuracy']:.3f}")
    result = {
        "format": FORMAT,
        "classes": classes,
        "model_sha256": sha256_file(run_dir / "model.safetensors"),
        "temperature": temperature,
        "threshold": choice["threshold"],
        "target_accuracy": float(target_accuracy),
        "target_reached": choice["reached"],
        "val_accuracy_at_threshold": choice["accuracy"],
        "coverage_at_threshold": choice["coverage"],
        "n_val": int(len(val_ok)),
        "val_accuracy": float(correct.mean()),
        "val_nll": {"before": round(nll(logits, labels), 6), "after": round(nll(logits, labels, temperature), 6)},
        "curve": curve,
        "novelty": None,
        "photos": str(Path(photos_val)),
        "skipped": skipped,
        "warnings": warnings,
    }
    refused = confidence < choice["threshold"]
    result["val_unknown"] = {"n_val": int(len(val_ok)), "confidence": int(refused.sum()), "novelty": None,
                             "either": int(refused.sum())}
    if novelty:
        index = {id(s): i for i, s in enumerate(samples)}
        rows = np.array([index[id(s)] for s in reference], dtype=int)
        rows = rows[ok[rows]]
        result["novelty"], loo, unit = _fit_novelty(run_dir, torch.from_numpy(feats[rows]), novelty_quantile)
        far = _val_novelty(feats, val_ok, rows, loo, unit, result["novelty"]["k"]) > result["novelty"]["threshold"]
        result["val_unknown"].update(novelty=int(far.sum()), either=int((far | refused).sum()))
    write_json(run_dir / CALIBRATION_JSON, result)
    for w in warnings:
        log.warning("%s", w)
    return result


def _subsample(samples: list, n: int) -> list:
    if len(samples) <= n:
        return list(samples)
    keep = np.sort(np.random.default_rng(0).choice(len(samples), n, replace=False))
    return [samples[i] for i in keep]


def _val_novelty(feats, val_ok, rows, loo, unit, k) -> np.ndarray:
    """Each readable validation photo's novelty left out of its own neighbours, as a new photo
    like it would score: its leave-one-out distance when it is a reference photo, else its
    distance to the reference."""
    at = {int(r): j for j, r in enumerate(rows)}
    out = np.empty(len(val_ok))
    missing = [j for j, i in enumerate(val_ok) if int(i) not in at]
    for j, i in enumerate(val_ok):
        if int(i) in at:
            out[j] = loo[at[int(i)]]
    if missing:
        queries = _unit(torch.from_numpy(feats[val_ok[missing]]).float())  # as Novelty.distance sees a photo
        out[missing] = knn_distance(queries, unit, k)
    return out


def _fit_novelty(run_dir: Path, reference: torch.Tensor, quantile: float) -> tuple[dict, np.ndarray, torch.Tensor]:
    from safetensors.torch import save_file

    if len(reference) < 2:
        raise GraftError("novelty needs at least two readable photos; pass novelty=False to skip it")
    stored = _unit(reference.float()).half().contiguous()  # what predict will compare with
    k = _reference_k(len(stored))
    unit = _unit(stored.float())  # exactly what Novelty compares new photos with
    loo = knn_distance(unit, unit, k, leave_one_out=True)
    threshold = float(np.quantile(loo, quantile, method="higher"))
    with atomic_path(run_dir / REFERENCE_FILE) as tmp:
        save_file({"reference": stored}, str(tmp))
    return {
        "method": "knn-cosine",
        "k": k,
        "threshold": threshold,
        "quantile": float(quantile),
        "n_reference": int(len(stored)),
        "reference_distance": {"median": float(np.median(loo)), "max": float(loo.max())},
        "file": REFERENCE_FILE,
        "sha256": sha256_file(run_dir / REFERENCE_FILE),
    }, loo, unit


def _thin(curve: list[dict], keep_threshold: float) -> list[dict]:
    if len(curve) > MAX_CURVE_POINTS:
        idx = set(np.linspace(0, len(curve) - 1, MAX_CURVE_POINTS).round().astype(int).tolist())
        curve = [p for i, p in enumerate(curve) if i in idx or p["threshold"] == keep_threshold]
    return [{"threshold": round(p["threshold"], 6), "coverage": round(p["coverage"], 6),
             "accuracy": round(p["accuracy"], 6)} for p in curve]


# --- using a calibration ---------------------------------------------------------------------

def load_calibration(run_dir) -> dict:
    """RUN/calibration.json, checked against the run's current model; GraftError says what to do."""
    run_dir = Path(run_dir)
    path = run_dir / CALIBRATION_JSON
    cal = read_json(path, missing=f"{run_dir} has no calibration: run `graft calibrate {run_dir} PHOTOS` first "
                    f"(PHOTOS: the photos it was trained on), or pass --reject none or a probability")
    if cal.get("format") != FORMAT:
        raise GraftError(f"{path} has format {cal.get('format')}; run `graft calibrate {run_dir} PHOTOS` again")
    if cal.get("model_sha256") != sha256_file(run_dir / "model.safetensors"):
        raise GraftError(f"{path} was made for an earlier model in {run_dir} (it was retrained since): "
                         f"run `graft calibrate {run_dir} PHOTOS` again")
    return cal


def load_novelty(run_dir, calibration: dict) -> Novelty | None:
    info = calibration.get("novelty")
    if not info:
        return None
    from safetensors.torch import load_file

    path = Path(run_dir) / info["file"]
    if not path.is_file() or sha256_file(path) != info["sha256"]:
        raise GraftError(f"{path} is missing or does not match {CALIBRATION_JSON}: "
                         f"run `graft calibrate {run_dir} PHOTOS` again")
    return Novelty(load_file(str(path))["reference"], int(info["k"]), float(info["threshold"]))
