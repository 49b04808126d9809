"""RUN/report.html: one self-contained page about a training run, to look at rather than read.

Built from RUN/metrics.json, RUN/model.json and RUN/val_predictions.npz (the validation photos'
probabilities as training scored them, so the report needs neither a forward pass nor the photos
scanned again): the header figures (and whether the frozen head beat a fine-tune), one photo per
class, training curves, the confusion matrix, per-class precision and recall, the most
confidently wrong validation photos, the calibration (RUN/calibration.json, `graft calibrate`),
the photo check (what training skipped, and RUN/check.json from `graft check PHOTOS --apply-to
RUN`), the augmentation preview (given the training photos) and where the time went. Every
picture is an embedded PNG (data: URI), the CSS is inline and the page has no script, so the file
can be mailed, archived or opened offline as it is; thumbnails and file names link to the photos
(file://), shown whole.

    graft report RUN [--photos PHOTOS] [--open]
    graft.report.write_report("runs/cats", photos="PHOTOS")

page.py: the page, escaping, links, charts' canvas; sections.py: what comes from metrics.json;
gallery.py: what shows photos; calibration.py: the calibration; findings.py: the photo check.
"""

from __future__ import annotations

from pathlib import Path

from graft._util.atomic import read_json, write_text
from graft.errors import GraftError
from graft.report.calibration import calibration
from graft.report.findings import check_findings
from graft.report.gallery import augmentation, examples, gallery
from graft.report.page import esc, fmt3, page
from graft.report.sections import confusion, curves, header, timings
from graft.run.files import CHECK_JSON, METRICS_JSON, REPORT_HTML

__all__ = ["write_report", "val_predictions", "stored_val_predictions", "fmt3", "CHECK_JSON"]


def write_report(run_dir, photos=None, *, data=None, cache_dir=None, weights=None,
                 workers: int | None = None) -> Path:
    """Build RUN/report.html (atomically) and return its path.

    `photos` (the folder the run was trained on), or `data` (those photos as graft.data.Dataset,
    when the caller scanned them already: training does) adds the augmentation preview, and the
    gallery for runs trained before graft stored their validation predictions.
    """
    from graft.run.photos import photos_split, read_val_predictions
    from graft.run.store import read_record

    run_dir = Path(run_dir)
    record = read_record(run_dir)
    metrics = read_json(run_dir / METRICS_JSON,
                        missing=f"{run_dir / METRICS_JSON} not found: the run did not finish; train it with `graft train`")
    if not isinstance(metrics, dict):
        raise GraftError(f"{run_dir / METRICS_JSON} is not a JSON object: it was altered or damaged; "
                         f"train the run again or restore its files")
    if data is None and photos is not None:
        data = photos_split(record, photos, cache_dir=_cache_root(run_dir, cache_dir))
    preds, note = _gallery_predictions(run_dir, record, metrics, data, cache_dir=cache_dir, weights=weights,
                                       workers=workers)
    root = metrics.get("photos") or (data.root if data is not None else None)
    parts = [header(run_dir, record, metrics), examples(metrics, data, preds), curves(metrics), confusion(metrics),
             gallery(run_dir, preds, note, root), calibration(run_dir, read_val_predictions(run_dir)),
             check_findings(run_dir, metrics),
             augmentation(record, metrics, data, _preview_cache(run_dir, cache_dir, data)), timings(metrics)]
    text = page(f"graft report: {run_dir.resolve().name}", "\n".join(s for s in parts if s))
    out = run_dir / REPORT_HTML
    write_text(out, text)  # a file name that is not UTF-8 is shown escaped (\udcff), not a UnicodeEncodeError
    return out


def _gallery_predictions(run_dir, record, metrics, data, **kw) -> tuple[list[dict] | None, str]:
    """-> (prediction items or None, a note saying where they come from)."""
    stored = stored_val_predictions(run_dir, record)
    if stored is not None:
        n_ok = sum(p["correct"] for p in stored)
        return stored, f"As training scored them: {len(stored)} validation photos, {n_ok} right."
    if data is None:
        return None, ""
    try:
        preds = _recomputed(run_dir, record, data, batch_size=32, **kw)
    except GraftError as e:
        return None, f'<p class="warn">No gallery: {esc(e)}</p>'
    n_ok = sum(p["correct"] for p in preds)
    note = f"Recomputed on {len(preds)} validation photos of {esc(data.root)}: {n_ok} right."
    m = metrics
    if preds and (len(preds) != m.get("n_val")
                  or (m.get("n_val") and fmt3(n_ok / len(preds)) != fmt3(m.get("val_accuracy")))):
        note += (' <span class="warn">This differs from metrics.json (photos changed since training, or '
                 "another split): the gallery shows the photos as they are now.</span>")
    return preds, note


# --- per-image predictions on the validation split --------------------------------------------

def stored_val_predictions(run_dir, record=None) -> list[dict] | None:
    """The validation photos with the run's prediction for each, as training stored them
    (RUN/val_predictions.npz); None for a run trained before graft stored them. Items as for
    `val_predictions`. `record`: the run's RunRecord, when the caller read it already."""
    from graft.run.photos import read_val_predictions
    from graft.run.store import read_record

    stored = read_val_predictions(run_dir)
    if stored is None:
        return None
    classes = (record or read_record(run_dir)).classes
    return _items(classes, stored["paths"], stored["labels"], stored["probabilities"])


def val_predictions(run_dir, photos, *, cache_dir=None, weights=None, batch_size: int = 32,
                    workers: int | None = None) -> list[dict]:
    """Each validation photo of the run's split of `photos`, with the run's prediction for it,
    computed afresh.

    The split is found again as training drew it (graft.run.photos.photos_split). Each item is {"path",
    "true", "pred", "probability" (of the predicted class), "true_probability", "correct"};
    files that cannot be read are left out. Frozen-backbone runs score the cached features (no
    forward pass when training filled the cache: `cache_dir` defaults to the run's own cache);
    other runs run the stored network on the run's evaluation preprocessing.
    """
    from graft.run.photos import photos_split
    from graft.run.store import read_record

    record = read_record(run_dir)
    return _recomputed(run_dir, record, photos_split(record, photos, cache_dir=_cache_root(run_dir, cache_dir)),
                       cache_dir=cache_dir, weights=weights, batch_size=batch_size, workers=workers)


def _recomputed(run_dir, record, data, *, cache_dir, weights, batch_size, workers) -> list[dict]:
    import numpy as np
    import torch

    from graft.use.features import run_features

    samples = list(data.val)
    if not samples:
        return []
    feats, ok, head, _ = run_features(run_dir, samples, cache_dir=_cache_root(run_dir, cache_dir), weights=weights,
                                      batch_size=batch_size, workers=workers)
    probs = np.full((len(samples), len(record.classes)), np.nan, dtype=np.float32)
    if ok.any():
        with torch.inference_mode():
            probs[ok] = head(torch.from_numpy(feats[ok])).softmax(1).numpy()
    return _items(record.classes, [s.path for s in samples], [s.label for s in samples], probs)


def _items(classes, paths, labels, probabilities) -> list[dict]:
    """Gallery items from aligned paths, true labels and class probabilities (NaN rows: photos
    that could not be read, left out)."""
    import numpy as np

    out = []
    for path, label, p in zip(paths, labels, probabilities):
        if np.isnan(p).any():
            continue
        pred, label = int(np.argmax(p)), int(label)
        out.append({"path": str(path), "true": classes[label], "pred": classes[pred],
                    "probability": float(p[pred]), "true_probability": float(p[label]), "correct": pred == label})
    return out


def _preview_cache(run_dir, cache_dir, data) -> Path | None:
    """Where the augmentation preview is kept (None: drawn, not kept), when there are photos to draw."""
    try:
        return _cache_root(run_dir, cache_dir) if data is not None else None
    except GraftError:  # no usable cache folder: the preview is drawn each time
        return None


def _cache_root(run_dir, cache_dir) -> Path:
    """The feature cache training used: given, else the parent of metrics' cache dir, else default."""
    from graft.cache import cache_root

    if cache_dir:
        return cache_root(cache_dir)
    try:
        recorded = (read_json(Path(run_dir) / METRICS_JSON, missing="").get("cache") or {}).get("dir")
    except (GraftError, AttributeError):  # then the default cache
        recorded = None
    if recorded and Path(recorded).parent.is_dir():
        return Path(recorded).parent
    return cache_root()
