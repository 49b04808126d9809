"""Training over a folder: what `--out` may be, and what no longer fits once a new model
replaces the one there.

graft writes a run only into a new or empty folder, or over a run it made (or one a killed
fine-tuning left: IN_PROGRESS); before the new model is written, the exports and calibration made
from the old one go, and only what graft can prove it made.
"""

from __future__ import annotations

import os
from pathlib import Path

from graft._util.atomic import read_json
from graft.errors import GraftError
from graft.run.files import CALIBRATION_JSON, EXPORT_JSON, IN_PROGRESS, MODEL_JSON
from graft.run.record import written_by_graft


def is_graft_run(folder) -> bool:
    """A folder whose model.json graft wrote (the marker; before it, graft's own keys)."""
    try:
        doc = read_json(Path(folder) / MODEL_JSON, missing="")
    except GraftError:
        return False
    return written_by_graft(doc)


def check_out(out, photos) -> None:
    """Refuse a training --out that would overwrite or mix with what graft did not make: the
    photos themselves or a folder inside them, a file or a path inside one, a folder that cannot be
    written, or a non-empty folder that is not a graft run (a fine-tuning killed before its model,
    which --resume continues, leaves only its checkpoint and its epoch log: IN_PROGRESS). A
    GraftError says which and what to give instead, before any photo is read."""
    out, photos = Path(out).expanduser(), Path(photos).expanduser()
    o, p = out.resolve(), photos.resolve()
    if o == p or p in o.parents:
        raise GraftError(f"--out {out} is {'the photo folder' if o == p else 'inside the photo folder'} {photos}: "
                         f"the run would mix with the photos; give a folder outside it, e.g. runs/{p.name}")
    if out.exists() and not out.is_dir():
        raise GraftError(f"--out {out} is a file; give a folder for the run")
    made = next(q for q in (out, *out.parents) if q.exists() or q == q.parent)  # what is there already
    if not made.is_dir():
        raise GraftError(f"--out {out} is inside {made}, which is a file; give a folder for the run")
    if not os.access(made, os.W_OK | os.X_OK):
        raise GraftError(f"--out {out}: no permission to write in {made}; make it writable or give another folder")
    if not out.is_dir() or is_graft_run(out):
        return
    entries = sorted(e.name for e in out.iterdir() if not e.name.startswith(".tmp-"))
    if not set(entries) <= IN_PROGRESS:
        shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
        raise GraftError(f"--out {out} is a folder that is not a graft run (it holds {shown}); graft "
                         f"writes a run only into a new or empty folder, or over a run it made")


def remove_stale(run_dir) -> list[str]:
    """Before a new model replaces the one in `run_dir`: delete what was made from the old one
    and would no longer match it, and only what graft can prove it made: the exports export.json
    lists (each file only while it has the digest recorded there; export.json itself) and the
    calibration (calibration.json; its reference features while they have their recorded
    digest). Returns the names removed."""
    from graft._util.digest import sha256_file

    run_dir = Path(run_dir)
    removed: list[str] = []

    def drop(name: str, digest=None) -> None:
        path = run_dir / str(name)
        if path.parent != run_dir or not path.is_file():
            return
        if digest is not None and sha256_file(path) != digest:
            return
        path.unlink()
        removed.append(path.name)

    exports = _graft_json(run_dir / EXPORT_JSON, "files")
    if exports is not None:
        for name, entry in (exports.get("files") or {}).items():
            drop(name, (entry or {}).get("sha256") or "-")
        client = exports.get("client") or {}
        if client.get("file"):
            drop(client["file"], client.get("sha256") or "-")
        drop(EXPORT_JSON)
    calibration = _graft_json(run_dir / CALIBRATION_JSON, "model_sha256")
    if calibration is not None:
        novelty = calibration.get("novelty") or {}
        if novelty.get("file"):
            drop(novelty["file"], novelty.get("sha256") or "-")
        drop(CALIBRATION_JSON)
    return removed


def _graft_json(path: Path, key: str) -> dict | None:
    """The JSON object in `path` if it is one graft wrote (it has `key`), else None."""
    try:
        doc = read_json(path, missing="")
    except GraftError:
        return None
    return doc if isinstance(doc, dict) and key in doc else None
