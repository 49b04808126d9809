"""The calibration files, RUN/calibration.json and the novelty check's reference features
(RUN/calibration.safetensors): written by calibrate_run, and read back only when they still
belong to the run's current model and to each other, and hold values a rule can use
(GraftError says what to do otherwise): a temperature of 0, NaN or -1 gave NaN or inverted
probabilities, a threshold of 2 called every photo `unknown`."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from graft._util.atomic import json_safe, read_json, write_json, write_safetensors
from graft._util.digest import sha256_file
from graft.errors import GraftError
from graft.run.files import CALIBRATION_JSON, CALIBRATION_REFERENCE
from graft.use.calibrate.novelty import Novelty

if TYPE_CHECKING:
    import torch

FORMAT = 1
DIGEST = "calibration_sha256"  # calibration.json's digest of its own content: an edit of it is refused
MAX_TEMPERATURE = 1e6  # a fitted temperature is near 1; past this every probability is uniform


def model_digest(run_dir: Path) -> str:
    """The hash of the run's weights that a calibration records: retraining makes it stale."""
    from graft.run.store import tensors_digest

    return tensors_digest(run_dir)


def write_reference(run_dir: Path, stored: torch.Tensor) -> dict:
    """Write the novelty check's reference features; -> their calibration.json entries (file, sha256)."""
    write_safetensors(run_dir / CALIBRATION_REFERENCE, {"reference": stored})
    return {"file": CALIBRATION_REFERENCE, "sha256": sha256_file(run_dir / CALIBRATION_REFERENCE)}


def write_calibration(run_dir: Path, calibration: dict) -> None:
    """calibration.json, with the digest of its own content (DIGEST) last; `calibration` gets the
    same entry, so that it stays what the file holds."""
    calibration.pop(DIGEST, None)
    calibration[DIGEST] = content_digest(calibration)
    write_json(run_dir / CALIBRATION_JSON, calibration)


def content_digest(doc: dict) -> str:
    """SHA-256 of a calibration document's canonical JSON, its own DIGEST left out."""
    body = {k: v for k, v in doc.items() if k != DIGEST}
    text = json.dumps(json_safe(body), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def load_calibration(run_dir) -> dict:
    """RUN/calibration.json, checked against the run's current model and for values the reject
    rule can use; GraftError says what to do."""
    run_dir = Path(run_dir)
    path = run_dir / CALIBRATION_JSON
    cal = read_json(path, missing=f"{run_dir} has no calibration: run `graft calibrate {run_dir} PHOTOS` first "
                    f"(PHOTOS: the photos it was trained on), or pass --reject none or a probability")
    again = f"run `graft calibrate {run_dir} PHOTOS` again"
    if not isinstance(cal, dict) or cal.get("format") != FORMAT:
        got = cal.get("format") if isinstance(cal, dict) else f"a JSON {type(cal).__name__}"
        raise GraftError(f"{path} has format {got}; {again}")
    problem = calibration_problem(cal)
    if problem:
        raise GraftError(f"{path} is not a usable calibration: {problem}; it was altered or damaged: {again}")
    if cal.get("model_sha256") != model_digest(run_dir):
        raise GraftError(f"{path} was made for an earlier model in {run_dir} (it was retrained since): {again}")
    if DIGEST in cal and cal[DIGEST] != content_digest(cal):
        raise GraftError(f"{path} was changed after `graft calibrate` wrote it (its content is not what graft "
                         f"recorded); graft does not use an edited calibration: {again}")
    return cal


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def calibration_problem(cal: dict) -> str | None:
    """What makes a calibration document unusable, in a few words, or None: the values the reject
    rule (graft.use.reject.apply_reject) and the novelty check read."""
    t, threshold, classes = cal.get("temperature"), cal.get("threshold"), cal.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        return '"classes" is not a list of class names'
    if not (_number(t) and 0 < t <= MAX_TEMPERATURE):
        return f'"temperature" is {t!r}, not a number in (0, {MAX_TEMPERATURE:g}]'
    if not (_number(threshold) and 0 <= threshold <= 1):
        return f'"threshold" is {threshold!r}, not a probability in [0, 1]'
    if not isinstance(cal.get("model_sha256"), str):
        return 'no "model_sha256" (the model it was made for)'
    return _novelty_problem(cal.get("novelty"))


def _novelty_problem(info) -> str | None:
    if info is None:
        return None
    if not isinstance(info, dict):
        return '"novelty" is not an object'
    k, threshold = info.get("k"), info.get("threshold")
    if not (isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= 1 << 20):
        return f'"novelty"."k" is {k!r}, not a whole number >= 1'
    if not (_number(threshold) and threshold >= 0):
        return f'"novelty"."threshold" is {threshold!r}, not a distance >= 0'
    if info.get("file") != CALIBRATION_REFERENCE or not isinstance(info.get("sha256"), str):
        return f'"novelty" does not name {CALIBRATION_REFERENCE} and its SHA-256'
    return None


def load_novelty(run_dir, calibration: dict) -> Novelty | None:
    """The calibration's novelty check (None when it has none), its reference file checked
    against the hash calibration.json recorded."""
    info = calibration.get("novelty")
    if not info:
        return None
    from safetensors.torch import load_file

    path = Path(run_dir) / info["file"]
    if not path.is_file() or sha256_file(path) != info["sha256"]:
        raise GraftError(f"{path} is missing or does not match {CALIBRATION_JSON}: "
                         f"run `graft calibrate {run_dir} PHOTOS` again")
    try:
        reference = load_file(str(path))["reference"]
    except Exception as e:  # the digest matched: only a file written wrong gets here
        raise GraftError(f"cannot read {path}: {e}; run `graft calibrate {run_dir} PHOTOS` again") from None
    return Novelty(reference, int(info["k"]), float(info["threshold"]))
