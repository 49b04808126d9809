"""Calibrated predictions, and "neither": photos unlike every class come back as `unknown`.

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

A prediction is `unknown` when its confidence is below tau or its novelty above the threshold;
it still lists the top-k classes with their (temperature-scaled) probabilities.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch

from ._atomic import atomic_path, write_json
from ._digest import sha256_file
from .errors import GraftError

log = logging.getLogger("graft")

CALIBRATION_JSON = "calibration.json"
REFERENCE_FILE = "calibration.safetensors"
UNKNOWN = "unknown"
FORMAT = 1
MAX_CURVE_POINTS = 200


# --- temperature scaling ---------------------------------------------------------------------

def fit_temperature(logits, labels, *, prior_sd: float | None = 1.0, max_iter: int = 100) -> float:
    """The temperature T > 0 minimising the NLL of softmax(logits / T) on `labels`.

    Optimised over log T with L-BFGS, in float64. `prior_sd`: sd of a Gaussian prior on log T
    centred on 0 (T = 1), i.e. a MAP fit; negligible with hundreds of photos, it keeps T finite
    when the photos are perfectly separated. None: plain NLL. T is clamped to [0.01, 100].
    """
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
    from .model import read_run_meta, run_features

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
    val, train, skipped = _run_photos(meta, photos_val)
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
    if novelty:
        index = {id(s): i for i, s in enumerate(samples)}
        rows = np.array([index[id(s)] for s in reference], dtype=int)
        rows = rows[ok[rows]]
        result["novelty"] = _fit_novelty(run_dir, torch.from_numpy(feats[rows]), novelty_quantile)
    write_json(run_dir / CALIBRATION_JSON, result)
    for w in warnings:
        log.warning("%s", w)
    return result


def _run_photos(meta: dict, photos):
    """-> (val samples, train samples, skipped) of the run's photos, its classes checked."""
    from .data import scan_class_folders, scan_photos

    photos = Path(photos).expanduser()
    training = meta.get("training") or {}
    classes = list(meta["classes"])
    split_layout = (photos / "train").is_dir() and (photos / "val").is_dir()
    if training.get("layout") == "train/val" and not split_layout:
        _, val, skipped = scan_class_folders(photos, classes=classes)
        return val, [], skipped
    data = scan_photos(photos, val_split=float(training.get("val_split", 0.2)))
    if data.classes != classes:
        raise GraftError(f"{photos} has classes {', '.join(data.classes)}; the run was trained on "
                         f"{', '.join(classes)}: give the photos the run was trained on")
    return data.val, data.train, list(data.skipped)


def _subsample(samples: list, n: int) -> list:
    if len(samples) <= n:
        return list(samples)
    keep = np.sort(np.random.default_rng(0).choice(len(samples), n, replace=False))
    return [samples[i] for i in keep]


def _fit_novelty(run_dir: Path, reference: torch.Tensor, quantile: float) -> dict:
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
    }


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
    if not path.is_file():
        raise GraftError(f"{run_dir} has no calibration: run `graft calibrate {run_dir} PHOTOS` first "
                         f"(PHOTOS: the photos it was trained on), or pass --reject none or a probability")
    try:
        cal = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise GraftError(f"cannot read {path}: {e}") from None
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


def parse_reject(value):
    """The CLI's --reject: "auto", "none" (-> None) or a probability in [0, 1] (-> float)."""
    if value is None or isinstance(value, float):
        return value
    text = str(value).strip().lower()
    if text in ("auto", "none"):
        return None if text == "none" else "auto"
    try:
        p = float(text)
    except ValueError:
        raise GraftError(f"--reject takes auto, none or a probability like 0.8, got {value!r}") from None
    if not 0.0 <= p <= 1.0:
        raise GraftError(f"--reject probability must be between 0 and 1, got {p}")
    return p


def calibration_for(run_dir, reject, classes, photos=None, **calibrate_kw) -> dict | None:
    """The calibration `reject` asks for: auto -> RUN/calibration.json (made from `photos` if
    missing and given), a float -> that raw probability threshold with T = 1, None -> none."""
    reject = parse_reject(reject)
    if reject is None:
        return None
    if reject == "auto":
        if photos is not None and not (Path(run_dir) / CALIBRATION_JSON).is_file():
            calibrate_run(run_dir, photos, **calibrate_kw)
        return load_calibration(run_dir)
    return {"classes": list(classes), "temperature": 1.0, "threshold": float(reject), "novelty": None}


def apply_reject(results: list[dict], logits, calibration: dict | None, novelty=None, topk: int = 3,
                 classes=None) -> list[dict]:
    """graft.api.predict-style results, re-scored: logits / T, top-k, and `class` set to the top
    class or `unknown` (confidence < threshold, or novelty > the novelty threshold).

    `logits`: one row per result without "error", in order (or one row per result, those of
    errors ignored). `novelty`: distances aligned the same way, or None. `classes` names the
    logit columns (default: the calibration's). Returns new dicts: {"path", "class",
    "confidence", "predictions": [{"class", "probability"}], ["novelty"], ["reason"]}; results
    with "error" are unchanged. `calibration` None: no rejection, T = 1.
    """
    cal = calibration or {"temperature": 1.0, "threshold": 0.0, "novelty": None}
    classes = list(classes if classes is not None else cal.get("classes") or [])
    logits = np.asarray(logits, dtype=np.float64)
    good = [i for i, r in enumerate(results) if "error" not in r]
    rows = good if len(logits) == len(results) != len(good) else list(range(len(good)))
    if len(logits) not in (len(good), len(results)) or (len(good) and logits.ndim != 2):
        raise GraftError(f"apply_reject: {len(logits)} logit rows for {len(good)} predictions")
    if good and logits.shape[1] != len(classes):
        raise GraftError(f"apply_reject: logits have {logits.shape[1]} columns for {len(classes)} class names")
    novelty = None if novelty is None else np.asarray(novelty, dtype=np.float64)
    nov_threshold = (cal.get("novelty") or {}).get("threshold")
    probs = softmax(logits, float(cal["temperature"])) if len(logits) else logits
    k = max(1, min(int(topk), len(classes) or 1))
    out = [dict(r) for r in results]
    for j, i in enumerate(good):
        p = probs[rows[j]]
        top = np.argsort(-p, kind="stable")[:k]
        r = {"path": results[i]["path"], "class": classes[top[0]], "confidence": round(float(p[top[0]]), 6),
             "predictions": [{"class": classes[c], "probability": round(float(p[c]), 6)} for c in top]}
        reasons = []
        if float(p[top[0]]) < float(cal["threshold"]):
            reasons.append(f"low confidence ({p[top[0]]:.3f} < {float(cal['threshold']):.3f})")
        if novelty is not None:
            d = float(novelty[rows[j]])
            r["novelty"] = round(d, 6)
            if nov_threshold is not None and d > nov_threshold:
                reasons.append(f"unlike the training photos (novelty {d:.3f} > {nov_threshold:.3f})")
        if reasons:
            r["class"] = UNKNOWN
            r["reason"] = "; ".join(reasons)
        out[i] = r
    return out


# --- predicting with rejection ---------------------------------------------------------------

def predict_logits(model, files, *, batch_size: int = 32, workers: int | None = None, novelty: Novelty | None = None,
                   progress: bool = False, desc: str = "predicting"):
    """Yield (indices, logits (n, C) float64 numpy, novelty distances or None, [(index, ImageError)])
    per batch, like graft.api.predict's loop (graft.loader.image_loader, the run's preprocessing)."""
    from tqdm.auto import tqdm

    with torch.inference_mode(), tqdm(total=len(files), desc=desc, unit="img", disable=not progress,
                                      leave=False) as bar:
        for idx, feats, errors in model.batches(files, batch_size=batch_size, workers=workers):
            logits = dist = None
            if feats is not None:
                logits = model.head(feats).double().numpy()
                dist = novelty.distance(feats) if novelty is not None else None
            bar.update(len(idx) + len(errors))
            yield idx, logits, dist, errors


def predict_with_reject(run, paths, topk: int = 3, reject="auto", photos=None, *, weights=None,
                        batch_size: int = 32, workers: int | None = None, progress: bool = False) -> list[dict]:
    """Top-k predictions for each image (folders expanded), with `class` the top class or `unknown`.

    `reject`: "auto" (RUN/calibration.json: its temperature, confidence threshold and novelty
    check; when missing, made from `photos` if given, else a GraftError says to run `graft
    calibrate RUN PHOTOS`), a float (a raw top-probability threshold, T = 1, no novelty check),
    or None / "none" (never unknown). Each result is {"path", "class", "confidence",
    "predictions": [{"class", "probability"}], ["novelty"], ["reason"]} or {"path", "error"}.
    """
    return list(_predict_iter(run, paths, topk=topk, reject=reject, photos=photos, weights=weights,
                              batch_size=batch_size, workers=workers, progress=progress))


def _predict_iter(run, paths, *, topk, reject, photos, weights, batch_size, workers, progress):
    """Yield results in input order, batch by batch."""
    from .api import expand_paths
    from .model import load_run, read_run_meta

    files = expand_paths(paths)
    cal = calibration_for(run, reject, read_run_meta(run)["classes"], photos=photos, weights=weights,
                          workers=workers)
    novelty = load_novelty(run, cal) if cal else None
    model = load_run(run, weights=weights)
    if cal and cal["classes"] != list(model.classes):
        raise GraftError(f"{Path(run) / CALIBRATION_JSON} is for other classes: run `graft calibrate {run} PHOTOS` again")
    done = 0
    pending: dict[int, dict] = {}
    for idx, logits, dist, errors in predict_logits(model, files, batch_size=batch_size, workers=workers,
                                                    novelty=novelty, progress=progress):
        for i, e in errors:
            pending[i] = {"path": str(files[i]), "error": e.reason}
        if idx:
            scored = apply_reject([{"path": str(files[i])} for i in idx], logits, cal, novelty=dist, topk=topk,
                                  classes=model.classes)
            pending.update(zip(idx, scored))
        while done in pending:
            yield pending.pop(done)
            done += 1


def csv_header(topk: int) -> list[str]:
    cols = ["path", "label", "confidence"]
    for i in range(1, topk + 1):
        cols += [f"class_{i}", f"probability_{i}"]
    return cols + ["novelty", "reason", "error"]


def predict_to_csv(run, paths, out_csv, topk: int = 3, reject=None, *, photos=None, weights=None,
                   batch_size: int = 32, workers: int | None = None, progress: bool = True) -> Path:
    """Predict every image in `paths` (folders expanded) into a CSV, one row per file, written
    atomically: path, label (the class or `unknown`, empty for an unreadable file), confidence,
    class_1, probability_1, ... class_k, probability_k, novelty, reason (why unknown), error.
    `reject` as for predict_with_reject (default None: every readable image gets a class)."""
    from .model import read_run_meta

    k = max(1, min(int(topk), len(read_run_meta(run)["classes"])))
    header = csv_header(k)
    out_csv = Path(out_csv)
    with atomic_path(out_csv) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        for r in _predict_iter(run, paths, topk=k, reject=reject, photos=photos, weights=weights,
                               batch_size=batch_size, workers=workers, progress=progress):
            row = {"path": r["path"], "label": r.get("class", ""), "error": r.get("error", ""),
                   "confidence": r.get("confidence", ""), "novelty": r.get("novelty", ""),
                   "reason": r.get("reason", "")}
            for j, p in enumerate(r.get("predictions", []), 1):
                row[f"class_{j}"], row[f"probability_{j}"] = p["class"], p["probability"]
            w.writerow(row)
    return out_csv


def format_result(r: dict) -> str:
    """One line for the terminal."""
    if "error" in r:
        return f"{r['path']}: error: {r['error']}"
    top = ", ".join(f"{p['class']} {p['probability']:.3f}" for p in r["predictions"])
    if r.get("class") == UNKNOWN:
        return f"{r['path']}: unknown [{r.get('reason', '')}]  top: {top}"
    return f"{r['path']}: {top}"


# --- command line ----------------------------------------------------------------------------

def add_cli(subparsers):
    """Register `graft calibrate RUN PHOTOS [--target-accuracy 0.99] [--json]` (handler: cmd_calibrate)."""
    p = subparsers.add_parser(
        "calibrate", help="fit confidence calibration and the 'unknown' thresholds of a run",
        description="Fit temperature scaling, a confidence threshold reaching --target-accuracy and a "
        "novelty threshold on the validation photos of PHOTOS (the photos RUN was trained on); "
        "`graft predict RUN ... --reject auto` then answers `unknown` for photos of neither class.")
    p.add_argument("run", metavar="RUN", help="run folder written by graft train")
    p.add_argument("photos", metavar="PHOTOS", help="the photo folder RUN was trained on")
    p.add_argument("--target-accuracy", type=float, default=0.99, metavar="A",
                   help="accuracy wanted on the photos not refused as unknown (default 0.99)")
    p.add_argument("--novelty-quantile", type=float, default=0.99, metavar="Q",
                   help="share of the training photos the novelty check must accept (default 0.99)")
    p.add_argument("--no-novelty", action="store_true", help="refuse on low confidence only")
    p.add_argument("--cache-dir", metavar="DIR", help="feature cache to reuse (default as for train)")
    p.add_argument("--weights", metavar="FILE", help="backbone weights file, if not where training found it")
    p.add_argument("--workers", default="auto", metavar="N|auto", help="image decoding processes (default auto)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or summary")
    p.add_argument("--json", action="store_true", help="print the calibration as JSON on stdout")
    p.set_defaults(handler=cmd_calibrate)
    return p


def add_predict_args(p) -> None:
    """The options `graft predict` needs for rejection and CSV output."""
    p.add_argument("--reject", default="none", metavar="auto|none|P",
                   help="answer `unknown` for photos of no class: auto (the thresholds of `graft "
                   "calibrate`), none (default), or a probability P (top probability below P)")
    p.add_argument("--calibrate-on", metavar="PHOTOS", default=None,
                   help="with --reject auto and no calibration yet: calibrate on these photos first")
    p.add_argument("--csv", metavar="FILE", default=None, help="write one CSV row per image to FILE")


def cmd_calibrate(args) -> int:
    cal = calibrate_run(args.run, args.photos, args.target_accuracy, novelty=not args.no_novelty,
                        novelty_quantile=args.novelty_quantile, cache_dir=args.cache_dir, weights=args.weights,
                        workers=_workers(args.workers), progress=not args.quiet and not args.json)
    if args.json:
        print(json.dumps(cal))
    elif not args.quiet:
        print(calibration_summary(cal, args.run))
    return 0


def calibration_summary(cal: dict, run_dir) -> str:
    reach = "reached" if cal["target_reached"] else "NOT reached (best reachable)"
    lines = [
        f"  temperature      {cal['temperature']:.3f}  (validation NLL {cal['val_nll']['before']:.3f} -> "
        f"{cal['val_nll']['after']:.3f})",
        f"  threshold        {cal['threshold']:.4f}  (top probability below it -> unknown)" if cal["threshold"] > 0
        else "  threshold        none needed: the validation photos reach the target at every confidence",
        f"  at threshold     accuracy {cal['val_accuracy_at_threshold']:.3f} ({reach}: target "
        f"{cal['target_accuracy']:g}), coverage {cal['coverage_at_threshold']:.3f} of {cal['n_val']} val photos",
    ]
    if cal.get("novelty"):
        n = cal["novelty"]
        nearest = "nearest" if n["k"] == 1 else f"{n['k']}th nearest"
        lines.append(f"  novelty          cosine distance to the {nearest} of {n['n_reference']} "
                     f"training photos above {n['threshold']:.4f} -> unknown")
    lines.append(f"  saved            {Path(run_dir) / CALIBRATION_JSON}")
    return "\n".join(lines)


def cmd_predict_reject(args) -> int:
    """`graft predict` with --reject / --csv (see add_predict_args)."""
    workers = _workers(args.workers)
    if args.csv:
        out = predict_to_csv(args.run, args.images, args.csv, topk=args.topk, reject=args.reject,
                             photos=args.calibrate_on, weights=args.weights, workers=workers,
                             progress=not args.quiet)
        if not args.quiet:
            print(f"wrote {out}")
        return 0
    results = predict_with_reject(args.run, args.images, topk=args.topk, reject=args.reject,
                                  photos=args.calibrate_on, weights=args.weights, workers=workers,
                                  progress=not args.quiet and not args.json)
    if args.json:
        print(json.dumps(results))
        return 0
    for r in results:
        print(format_result(r))
    return 0 if any("predictions" in r for r in results) else 1


def _workers(value):
    if value in (None, "auto"):
        return None
    try:
        n = int(value)
        if n < 0:
            raise ValueError
        return n
    except ValueError:
        raise GraftError(f"--workers must be 'auto' or a number >= 0, got {value!r}") from None
