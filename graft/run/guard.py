"""Training over a folder: what `--out` may be, and what no longer fits once a new model
replaces the one there.

graft writes a run only into a new or empty folder, or over a run it made (or one a killed
fine-tuning left: IN_PROGRESS); before the new model is written, the exports and calibration made
from the old one go, and only what graft can prove it made.
"""

from __future__ import annotations

import os
from pathlib import Path

from graft._util.atomic import read_json, write_error
from graft._util.output import check_output as _check_output
from graft.errors import GraftError
from graft.run.files import CALIBRATION_JSON, EXPORT_JSON, IN_PROGRESS, MODEL_JSON, MODEL_TENSORS, TRAIN_LOCK
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
    which --resume continues, leaves only its checkpoint and its epoch log: IN_PROGRESS, and
    maybe the tensors it wrote just before model.json, marked as graft's in their metadata). A
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
    entries = sorted(e.name for e in out.iterdir() if not e.name.startswith(".tmp-") and e.name != TRAIN_LOCK)
    foreign = set(entries) - IN_PROGRESS
    tensors = out / MODEL_TENSORS
    if foreign == {MODEL_TENSORS} and tensors.is_file() and not tensors.is_symlink():  # killed before model.json
        from graft.run.store import tensors_written_by_graft

        foreign = set() if tensors_written_by_graft(tensors) else foreign
    if foreign:
        shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
        raise GraftError(f"--out {out} is a folder that is not a graft run (it holds {shown}); graft "
                         f"writes a run only into a new or empty folder, or over a run it made")


class RunLock:
    """lock_run's lock: the open lock file, and the folders it made (removed again when empty: a
    training refused before it wrote anything leaves no folder behind)."""

    def __init__(self, out: Path):
        import fcntl

        self.path = out / TRAIN_LOCK
        self.made = [q for q in (out, *out.parents) if not q.exists()]
        try:
            out.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "a+", encoding="utf-8")
        except OSError as e:
            self._remove_made()
            raise write_error(self.path, e) from e
        try:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(self.file.fileno()).st_ino != os.stat(self.path).st_ino:  # released and removed meanwhile
                raise BlockingIOError
        except OSError:
            self.file.seek(0)
            holder = self.file.read(32).strip()
            self.file.close()
            raise GraftError(f"--out {out} is being written by another graft train"
                             f"{f' (process {holder})' if holder.isdigit() else ''}: wait for it to end or give "
                             f"another folder") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()

    def release(self) -> None:
        """Remove the lock file, then release it; and the folders it made, while empty."""
        try:
            os.unlink(self.path)
        except OSError:
            pass
        self.file.close()
        self._remove_made()

    def _remove_made(self) -> None:
        for folder in self.made:  # deepest first
            try:
                folder.rmdir()
            except OSError:  # not empty (the run is in it) or gone
                break


def lock_run(out) -> RunLock:
    """Hold the run folder `out` for this training: a second `graft train` into it is refused in one
    line instead of replacing the first's files mid-flight. An flock, so the kernel releases it when
    the process ends, killed too: a stale lock never blocks. Release with unlock_run."""
    return RunLock(Path(out).expanduser())


def unlock_run(lock: RunLock) -> None:
    lock.release()


def check_output(target, flag: str, *, inputs=(), is_ours=None, run=None, run_files=frozenset()) -> Path:
    """graft._util.output.check_output, and a file inside a graft run refused unless it is one of
    `run_files`, the names this command writes into its own `run`: an output never replaces a
    run's model, record or anything else of it."""
    real = Path(os.path.realpath(Path(target).expanduser()))
    folder = next((f for f in real.parents if is_graft_run(f)), None)
    own = folder is not None and run is not None and folder == Path(os.path.realpath(run)) == real.parent
    if folder is not None and not (own and real.name in run_files):
        raise GraftError(f"{flag} {target} is inside the graft run {folder}: an output never replaces a run's "
                         f"files; give a path outside the run")
    return _check_output(target, flag, inputs=inputs, is_ours=is_ours)


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
