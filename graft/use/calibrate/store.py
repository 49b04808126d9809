"""The calibration files, RUN/calibration.json and the novelty check's reference features
(RUN/calibration.safetensors): written by calibrate_run, and read back only when they still
belong to the run's current model and to each other (GraftError says what to do otherwise)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from graft._util.atomic import read_json, write_json, write_safetensors
from graft._util.digest import sha256_file
from graft.errors import GraftError
from graft.run.files import CALIBRATION_JSON, CALIBRATION_REFERENCE, MODEL_TENSORS
from graft.use.calibrate.novelty import Novelty

if TYPE_CHECKING:
    import torch

FORMAT = 1


def model_digest(run_dir: Path) -> str:
    """The hash of the run's weights that a calibration records: retraining makes it stale."""
    return sha256_file(run_dir / MODEL_TENSORS)


def write_reference(run_dir: Path, stored: torch.Tensor) -> dict:
    """Write the novelty check's reference features; -> their calibration.json entries (file, sha256)."""
    write_safetensors(run_dir / CALIBRATION_REFERENCE, {"reference": stored})
    return {"file": CALIBRATION_REFERENCE, "sha256": sha256_file(run_dir / CALIBRATION_REFERENCE)}


def write_calibration(run_dir: Path, calibration: dict) -> None:
    write_json(run_dir / CALIBRATION_JSON, calibration)


def load_calibration(run_dir) -> dict:
    """RUN/calibration.json, checked against the run's current model; GraftError says what to do."""
    run_dir = Path(run_dir)
    path = run_dir / CALIBRATION_JSON
    cal = read_json(path, missing=f"{run_dir} has no calibration: run `graft calibrate {run_dir} PHOTOS` first "
                    f"(PHOTOS: the photos it was trained on), or pass --reject none or a probability")
    if cal.get("format") != FORMAT:
        raise GraftError(f"{path} has format {cal.get('format')}; run `graft calibrate {run_dir} PHOTOS` again")
    if cal.get("model_sha256") != model_digest(run_dir):
        raise GraftError(f"{path} was made for an earlier model in {run_dir} (it was retrained since): "
                         f"run `graft calibrate {run_dir} PHOTOS` again")
    return cal


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
    return Novelty(load_file(str(path))["reference"], int(info["k"]), float(info["threshold"]))
