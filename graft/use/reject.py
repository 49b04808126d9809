"""`unknown` for photos of no class: what `--reject` asks for (auto, none or a probability),
the calibration that answers it, and the rule that applies it to a batch of logits.

graft.use.calibrate fits the thresholds (temperature, confidence, novelty); this module only reads
and applies them, with numpy: the same rule serves the PyTorch network and an exported ONNX
graph (graft.use.predictor), and is the one an exported model's metadata spells out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from graft.errors import GraftError
from graft.run.files import CALIBRATION_JSON
from graft.use.calibrate import calibrate_run, load_calibration, softmax

UNKNOWN = "unknown"


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
