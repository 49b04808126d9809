"""Using a trained run: `predict` (top-k classes, optionally calibrated, with `unknown` for
photos of no class, optionally to CSV) and `evaluate` (accuracy on labelled photos).

Every prediction goes through one loop: the run's classifier on batches from the parallel
loader, its logits divided by the calibration's temperature, the top-k classes kept, and the
photo called `unknown` when the calibration's confidence or novelty check refuses it
(graft.calibrate fits those thresholds). Results come back in input order.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import torch

from ._atomic import atomic_path
from .calibrate import CALIBRATION_JSON, Novelty, calibrate_run, load_calibration, load_novelty, softmax
from .data import scan_class_folders
from .data.images import SUPPORTED_EXTENSIONS
from .errors import GraftError
from .metrics import classification_metrics
from .run import load_run, read_run_meta, run_features

log = logging.getLogger("graft")

UNKNOWN = "unknown"


def predict(run, paths, *, topk: int = 3, weights=None, batch_size: int = 32,
            workers: int | None = None) -> list[dict]:
    """Top-k classes with probabilities for each image (folders are expanded).

    Each result is {"path", "predictions": [{"class", "probability"}]} or {"path", "error"}.
    """
    return [{k: r[k] for k in ("path", "predictions", "error") if k in r}
            for r in iter_predictions(run, paths, topk=topk, reject=None, weights=weights,
                                      batch_size=batch_size, workers=workers)]


def predict_with_reject(run, paths, topk: int = 3, reject="auto", photos=None, *, weights=None,
                        batch_size: int = 32, workers: int | None = None, progress: bool = False) -> list[dict]:
    """Top-k predictions for each image (folders expanded), with `class` the top class or `unknown`.

    `reject`: "auto" (RUN/calibration.json: its temperature, confidence threshold and novelty
    check; when missing, made from `photos` if given, else a GraftError says to run `graft
    calibrate RUN PHOTOS`), a float (a raw top-probability threshold, T = 1, no novelty check),
    or None / "none" (never unknown). Each result is {"path", "class", "confidence",
    "predictions": [{"class", "probability"}], ["novelty"], ["reason"]} or {"path", "error"}.
    """
    return list(iter_predictions(run, paths, topk=topk, reject=reject, photos=photos, weights=weights,
                                 batch_size=batch_size, workers=workers, progress=progress))


def iter_predictions(run, paths, *, topk: int = 3, reject=None, photos=None, weights=None, batch_size: int = 32,
                     workers: int | None = None, progress: bool = False):
    """predict_with_reject's results, yielded in input order batch by batch (the CSV is written
    as they come)."""
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


def predict_logits(model, files, *, batch_size: int = 32, workers: int | None = None, novelty: Novelty | None = None,
                   progress: bool = False, desc: str = "predicting"):
    """Yield (indices, logits (n, C) float64 numpy, novelty distances or None, [(index, ImageError)])
    per batch of `files` (graft.loader.image_loader, the run's preprocessing)."""
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


def predict_to_csv(run, paths, out_csv, topk: int = 3, reject=None, *, photos=None, weights=None,
                   batch_size: int = 32, workers: int | None = None, progress: bool = True) -> Path:
    """Predict every image in `paths` (folders expanded) into a CSV, one row per file, written
    atomically: path, label (the class or `unknown`, empty for an unreadable file), confidence,
    class_1, probability_1, ... class_k, probability_k, novelty, reason (why unknown), error.
    `reject` as for predict_with_reject (default None: every readable image gets a class)."""
    k = max(1, min(int(topk), len(read_run_meta(run)["classes"])))
    header = csv_header(k)
    out_csv = Path(out_csv)
    with atomic_path(out_csv) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        for r in iter_predictions(run, paths, topk=k, reject=reject, photos=photos, weights=weights,
                                  batch_size=batch_size, workers=workers, progress=progress):
            row = {"path": r["path"], "label": r.get("class", ""), "error": r.get("error", ""),
                   "confidence": r.get("confidence", ""), "novelty": r.get("novelty", ""),
                   "reason": r.get("reason", "")}
            for j, p in enumerate(r.get("predictions", []), 1):
                row[f"class_{j}"], row[f"probability_{j}"] = p["class"], p["probability"]
            w.writerow(row)
    return out_csv


def csv_header(topk: int) -> list[str]:
    cols = ["path", "label", "confidence"]
    for i in range(1, topk + 1):
        cols += [f"class_{i}", f"probability_{i}"]
    return cols + ["novelty", "reason", "error"]


# --- rejection: `unknown` for photos of no class -----------------------------------------------

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
    """predict-style results, re-scored: logits / T, top-k, and `class` set to the top
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


# --- labelled photos ----------------------------------------------------------------------------

def evaluate(run, photos, *, cache_dir=None, weights=None, batch_size: int = 32,
             workers: int | None = None, progress: bool = False) -> dict:
    """Accuracy, per-class figures and confusion matrix of a run on labelled photos.

    `photos` is `<dir>/<class>/*` with the run's classes (or a folder whose `val/` is that).
    Frozen-backbone runs reuse the feature cache, so evaluating on the validation photos after
    training makes no forward pass through the backbone.
    """
    photos = Path(photos)
    if (photos / "val").is_dir() and (photos / "train").is_dir():
        photos = photos / "val"
    meta = read_run_meta(run)
    classes, samples, skipped = scan_class_folders(photos, classes=meta["classes"])
    feats, ok, head, more = run_features(run, samples, cache_dir=cache_dir, weights=weights, batch_size=batch_size,
                                         workers=workers, progress=progress)
    skipped += more
    with torch.no_grad():
        pred = head(torch.from_numpy(feats[ok])).argmax(1).numpy()
    for item in skipped:
        log.warning("skipped %s: %s", item["path"], item["reason"])
    y = np.array([s.label for s in samples])[ok]
    metrics = classification_metrics(y, pred, classes)
    metrics["skipped"] = skipped
    return metrics


def expand_paths(paths) -> list[Path]:
    """Files as given; folders become the supported images inside them (recursively, sorted)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for p in paths:
        text = str(p)
        if "://" in text:
            raise GraftError(f"{text} looks like a URL; graft reads local files only: download it first")
        p = Path(p).expanduser()
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in SUPPORTED_EXTENSIONS
                            and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.exists():
            files.append(p)
        else:
            raise GraftError(f"no such file or folder: {p}")
    if not files:  # say so, rather than print nothing
        where = ", ".join(str(p) for p in paths)
        raise GraftError(f"no image found in {where} (looked for {', '.join(sorted(SUPPORTED_EXTENSIONS))})")
    return files
