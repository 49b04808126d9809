"""Using a trained run: `predict` (top-k classes, optionally calibrated, with `unknown` for
photos of no class, optionally to CSV) and `evaluate` (accuracy on labelled photos).

Every prediction goes through graft.use.predictor.Predictor: the run loaded once, each photo's crop
through the network (or its cached features through the head), the logits divided by the
calibration's temperature, the top-k classes kept, and the photo called `unknown` when the
calibration's confidence or novelty check refuses it (graft.use.reject; graft.use.calibrate fits those
thresholds). Results come back in input order.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from graft._util.atomic import atomic_text
from graft.backbones.preprocess import parse_tta, tta_views
from graft.data import is_label_file, scan_class_folders
from graft.data.images import SUPPORTED_EXTENSIONS
from graft.data.labels import evaluation_photos
from graft.errors import GraftError
from graft.heads.metrics import classification_metrics
from graft.run.files import CALIBRATION_JSON
from graft.run.store import read_record
from graft.use.calibrate import calibrate_run
from graft.use.features import run_features
from graft.use.predictor import Predictor, check_topk
from graft.use.reject import UNKNOWN, apply_reject, calibration_for, parse_reject  # noqa: F401  (graft.use.inference's API)

log = logging.getLogger("graft")


def predict(run, paths, *, topk: int = 3, weights=None, batch_size: int = 32,
            workers: int | None = None, cache_dir=None, engine: str = "auto", tta=None) -> list[dict]:
    """Top-k classes with probabilities for each image (folders are expanded).

    Each result is {"path", "predictions": [{"class", "probability"}]} or {"path", "error"}.
    `cache_dir`: a feature cache whose features of these photos skip the backbone. `engine`: as
    graft.Predictor's (auto: the run's fresh ONNX export when it has one). `tta`: None or
    "flip" (the centre crop and its mirror, logits averaged; graft.Predictor). For many calls,
    keep one graft.Predictor: this loads the run every time.
    """
    files = expand_paths(paths)
    predictor = Predictor(run, weights=weights, cache_dir=cache_dir, engine=engine, tta=tta)
    return predictor.predict(files, topk, batch_size=batch_size, workers=workers)


def predict_with_reject(run, paths, topk: int = 3, reject="auto", photos=None, *, weights=None,
                        batch_size: int = 32, workers: int | None = None, progress: bool = False,
                        cache_dir=None, engine: str = "auto", tta=None) -> list[dict]:
    """Top-k predictions for each image (folders expanded), with `class` the top class or `unknown`.

    `reject`: "auto" (RUN/calibration.json: its temperature, confidence threshold and novelty
    check; when missing, made from `photos` if given, else a GraftError says to run `graft
    calibrate RUN PHOTOS`), a float (a raw top-probability threshold, T = 1, no novelty check),
    or None / "none" (never unknown). Each result is {"path", "class", "confidence",
    "predictions": [{"class", "probability"}], ["novelty"], ["reason"]} or {"path", "error"}.
    """
    return list(iter_predictions(run, paths, topk=topk, reject=reject, photos=photos, weights=weights,
                                 batch_size=batch_size, workers=workers, progress=progress, cache_dir=cache_dir,
                                 engine=engine, tta=tta))


def iter_predictions(run, paths, *, topk: int = 3, reject=None, photos=None, weights=None, batch_size: int = 32,
                     workers: int | None = None, progress: bool = False, cache_dir=None, engine: str = "auto",
                     tta=None):
    """predict_with_reject's results, yielded in input order batch by batch (the CSV is written
    as they come). With `reject` None they have a `class` too, never `unknown`."""
    files = expand_paths(paths)
    reject = parse_reject(reject)
    if reject == "auto" and photos is not None and not (Path(run) / CALIBRATION_JSON).is_file():
        calibrate_run(run, photos, weights=weights, workers=workers)
    predictor = Predictor(run, weights=weights, cache_dir=cache_dir, engine=engine, tta=tta)
    # no rejection is a threshold of 0: every photo gets its top class as `class`, with its confidence
    yield from predictor.iter_predict(files, topk, 0.0 if reject is None else reject, batch_size=batch_size,
                                      workers=workers, progress=progress)


def predict_to_csv(run, paths, out_csv, topk: int = 3, reject=None, *, photos=None, weights=None,
                   batch_size: int = 32, workers: int | None = None, progress: bool = True, cache_dir=None,
                   engine: str = "auto", tta=None) -> Path:
    """Predict every image in `paths` (folders expanded) into a CSV, one row per file, written
    atomically: path, label (the class or `unknown`, empty for an unreadable file), confidence,
    class_1, probability_1, ... class_k, probability_k, novelty, reason (why unknown), error.
    `reject` as for predict_with_reject (default None: every readable image gets a class)."""
    from graft.run.guard import check_output

    read = [run, *([paths] if isinstance(paths, (str, Path)) else paths), *([photos] if photos else [])]
    out_csv = check_output(out_csv, "--csv", inputs=read, is_ours=is_predictions_csv)
    check_topk(topk)
    k = min(int(topk), len(read_record(run).classes))
    header = csv_header(k)
    with atomic_text(out_csv, newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        for r in iter_predictions(run, paths, topk=k, reject=reject, photos=photos, weights=weights,
                                  batch_size=batch_size, workers=workers, progress=progress, cache_dir=cache_dir,
                                  engine=engine, tta=tta):
            row = {"path": r["path"], "label": r.get("class", ""), "error": r.get("error", ""),
                   "confidence": r.get("confidence", ""), "novelty": r.get("novelty", ""),
                   "reason": r.get("reason", "")}
            for j, p in enumerate(r.get("predictions", []), 1):
                row[f"class_{j}"], row[f"probability_{j}"] = p["class"], p["probability"]
            w.writerow(row)
    return out_csv


def is_predictions_csv(path) -> bool:
    """A CSV `graft predict --csv` wrote, by its header line (which no photo or label file starts
    with): the only existing file --csv replaces. A marker inside would change the format every
    CSV reader sees; the header is graft's own already."""
    from graft._util.output import read_head

    first = read_head(path, 4096).split(b"\n", 1)[0].rstrip(b"\r")
    cols = first.decode("ascii", "replace").split(",")
    k = (len(cols) - 6) // 2
    return k >= 1 and cols == csv_header(k)


def csv_header(topk: int) -> list[str]:
    cols = ["path", "label", "confidence"]
    for i in range(1, topk + 1):
        cols += [f"class_{i}", f"probability_{i}"]
    return cols + ["novelty", "reason", "error"]


# --- labelled photos ----------------------------------------------------------------------------

def evaluate(run, photos, *, cache_dir=None, weights=None, batch_size: int = 32,
             workers: int | None = None, progress: bool = False, tta=None) -> dict:
    """Accuracy, per-class figures and confusion matrix of a run on labelled photos.

    `photos` is `<dir>/<class>/*` with the run's classes (or a folder whose `val/` is that), or
    a label file (path,label[,split]): its rows with split=test when it has any, else every row.
    Frozen-backbone runs reuse the feature cache, so evaluating on the validation photos after
    training makes no forward pass through the backbone. `tta="flip"`: each photo's logits are
    the mean of its centre crop's and its mirror's; `tta="crops"`: of its centre and four corner
    crops (graft.backbones.preprocess.tta_views; their features are cached too).
    """
    tta = parse_tta(tta)
    photos = Path(photos).expanduser()
    if (photos / "val").is_dir() and (photos / "train").is_dir():
        photos = photos / "val"
    run_classes = list(read_record(run).classes)
    if is_label_file(photos):
        data = evaluation_photos(photos, run_classes)
        classes, samples, skipped = data.classes, data.val, data.skipped
    else:
        classes, samples, skipped = scan_class_folders(photos, classes=run_classes, cache_dir=cache_dir)
    views = []  # each --tta crop's features; the same files fail every way: their reasons are listed once
    for i, (at, mirror) in enumerate(tta_views(tta)):
        feats, ok_v, head, more = run_features(run, samples, cache_dir=cache_dir, weights=weights,
                                               batch_size=batch_size, workers=workers, progress=progress,
                                               mirror=mirror, at=at)
        views.append(feats)
        if i == 0:
            ok = ok_v
            skipped += more
        else:
            ok = ok & ok_v
    import torch

    with torch.no_grad():  # logits averaged (graft.Predictor's tta): a fitted temperature still divides them
        logits = sum(head(torch.from_numpy(v[ok])) for v in views) / len(views)
        pred = logits.argmax(1).numpy()
    for item in skipped:
        log.warning("skipped %s: %s", item["path"], item["reason"])
    y = np.array([s.label for s in samples])[ok]
    metrics = classification_metrics(y, pred, classes)
    metrics["skipped"] = skipped
    metrics["tta"] = tta or "none"
    return metrics


def expand_paths(paths) -> list[Path]:
    """Files as given; folders become the supported images inside them (recursively, sorted)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    left_out: list[tuple[Path, list[Path]]] = []
    for p in paths:
        text = str(p)
        if "://" in text:
            raise GraftError(f"{text} looks like a URL; graft reads local files only: download it first")
        p = Path(p).expanduser()
        if p.is_dir():
            visible = [f for f in p.rglob("*") if not any(part.startswith(".") for part in f.relative_to(p).parts)]
            files += sorted(f for f in visible if f.suffix.lower() in SUPPORTED_EXTENSIONS)
            left_out.append((p, sorted(f for f in visible if f.suffix.lower() not in SUPPORTED_EXTENSIONS
                                       and not f.is_dir())))
        elif p.exists():
            files.append(p)
        else:
            raise GraftError(f"no such file or folder: {p}")
    if not files:  # say so, rather than print nothing
        where = ", ".join(str(p) for p in paths)
        raise GraftError(f"no image found in {where} (looked for {', '.join(sorted(SUPPORTED_EXTENSIONS))})")
    for folder, others in left_out:  # a file named directly is refused; one in a folder is said, once
        if others:
            names = ", ".join(str(f.relative_to(folder)) for f in others[:3])
            log.warning("left out %d file(s) in %s that are not photos (%s%s): graft predicts %s files",
                        len(others), folder, names, f" and {len(others) - 3} more" if len(others) > 3 else "",
                        ", ".join(sorted(set(SUPPORTED_EXTENSIONS))))
    return files
