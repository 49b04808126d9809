"""Per-epoch training log that a user's usual tools read: `RUN/log.csv` (always) and TensorBoard
event files (`RUN/tensorboard/`, with the optional `tensorboard` package: `--log tensorboard`).

metrics.json is the run's summary, written at the end; a fine-tune of minutes to hours needs a
record that grows while it runs. Each epoch that ends adds one row for its stage ("head": the
new softmax on cached features, "finetune"): losses, accuracy, learning rates, timings and the
share of the epoch spent waiting for data. The CSV is rewritten atomically (a few hundred rows
at most), so a killed run leaves a complete file, never half a row; a resumed run starts from the
rows on disk and replaces an epoch it runs again rather than doubling it. An atomic write costs
about 10 ms, as much as a head epoch on cached features, so head epochs are written when the
last write is `EVERY_S` old and when the head ends; every fine-tuning epoch is written as it ends,
before its checkpoint.

TensorBoard files are append-only, so they are kept honest another way: a fresh run removes the
event files an earlier run into the same folder wrote (graft names its own `*.graft`, so it
never touches another program's), and a resumed run sends TensorBoard only the epochs its log
did not hold yet.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from pathlib import Path

from graft._util.atomic import write_bytes
from graft.errors import GraftError
from graft.run.files import LOG_CSV, TENSORBOARD

log = logging.getLogger("graft")

LOG_KINDS = ("csv", "tensorboard")
CSV_FILE, TENSORBOARD_DIR = LOG_CSV, TENSORBOARD  # named once, in graft.run.files (what --out may hold)
EVENTS_SUFFIX = ".graft"  # the end of every event file graft writes: what a fresh run may remove
EVERY_S = 1.0  # seconds between writes while epochs end faster than that
COLUMNS = ["stage", "epoch", "train_loss", "val_loss", "val_accuracy", "lr", "lr_backbone", "epoch_s",
           "data_wait_s", "step_s", "val_s", "data_wait_share"]


def parse_log_kinds(value) -> tuple[str, ...]:
    """"csv", "tensorboard", "csv,tensorboard", or a sequence of those; csv is always written."""
    if value is None or value == "":
        return ("csv",)
    kinds = [k.strip().lower() for k in (value.split(",") if isinstance(value, str) else value) if k.strip()]
    unknown = [k for k in kinds if k not in LOG_KINDS]
    if unknown:
        raise GraftError(f"--log: unknown kind(s) {', '.join(unknown)}; use {' or '.join(LOG_KINDS)}")
    return tuple(dict.fromkeys(["csv", *kinds]))


def require_tensorboard() -> None:
    """Fail before training when --log tensorboard cannot be honoured."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise GraftError("--log tensorboard needs the tensorboard package: pip install 'graft[tensorboard]' "
                         "(or pip install tensorboard), or use --log csv") from None


class TrainingLog:
    """`log.epoch("finetune", 3, train_loss=..., val_loss=...)` as each epoch ends. Nothing is
    written before the first epoch, so a run refused at the start leaves no file behind."""

    def __init__(self, run_dir, kinds=("csv",), *, resume: bool = False):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / CSV_FILE
        self.kinds = parse_log_kinds(kinds)
        if "tensorboard" in self.kinds:
            require_tensorboard()
        self.resume = resume
        self.rows: list[dict] = self._read() if resume else []
        self._logged_before = {(r["stage"], int(r["epoch"])) for r in self.rows}
        self._tb = None
        self._pending: list[dict] = []  # rows TensorBoard has not been sent yet
        self._written = -math.inf  # when the files were last written (time.monotonic)

    def files(self) -> dict:
        """What the log writes, relative to the run folder (recorded in metrics.json)."""
        return {"csv": CSV_FILE, **({"tensorboard": TENSORBOARD_DIR} if "tensorboard" in self.kinds else {})}

    def on_epoch(self, stage: str, *, each: bool = False):
        """The callback graft.heads.softmax.train_head and graft.finetune.loop.finetune call: (epoch, scalars).
        `each`: write every epoch (fine-tuning, whose epochs end in a checkpoint: the log then
        holds every epoch a resumed run will not run again)."""
        return lambda epoch, scalars: self.epoch(stage, epoch, flush=each, **scalars)

    def epoch(self, stage: str, epoch: int, *, flush: bool = False, **scalars) -> None:
        row = {"stage": stage, "epoch": int(epoch)}
        row.update({k: _finite(v) for k, v in scalars.items()})
        at = next((i for i, r in enumerate(self.rows) if (r["stage"], int(r["epoch"])) == (stage, int(epoch))), None)
        if at is None:
            self.rows.append(row)
        else:  # an epoch run again (resumed, or the head before a resumed fine-tune) keeps its place
            self.rows[at] = row
        if "tensorboard" in self.kinds and (stage, int(epoch)) not in self._logged_before:
            self._pending.append(row)
        stage_changed = len(self.rows) > 1 and self.rows[-2]["stage"] != stage and at is None
        if flush or stage_changed or time.monotonic() - self._written >= EVERY_S:
            self.flush()

    def flush(self) -> None:
        """Write what the last epochs added (a stage's end calls it; epochs call it now and then)."""
        if not self.rows:
            return
        self._write_csv()
        if self._pending:
            tb = self._writer()
            for row in self._pending:
                for k, v in row.items():
                    if k not in ("stage", "epoch") and v is not None:
                        tb.add_scalar(f"{row['stage']}/{k}", v, int(row["epoch"]))
            tb.flush()
            self._pending = []
        self._written = time.monotonic()

    def close(self) -> None:
        self.flush()
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def _writer(self):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            folder = self.run_dir / TENSORBOARD_DIR
            if not self.resume and folder.is_dir():  # an earlier run's curves would mix with these
                for old in folder.glob(f"events.out.tfevents.*{EVENTS_SUFFIX}"):
                    old.unlink(missing_ok=True)
            self._tb = SummaryWriter(log_dir=str(folder), filename_suffix=EVENTS_SUFFIX)
        return self._tb

    def _write_csv(self) -> None:
        columns = COLUMNS + sorted({k for r in self.rows for k in r} - set(COLUMNS))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
        write_bytes(self.path, buf.getvalue().encode())

    def _read(self) -> list[dict]:
        try:
            with open(self.path, newline="") as f:
                rows = [{k: v for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
            return [r for r in rows if r.get("stage") and str(r.get("epoch", "")).isdigit()]
        except FileNotFoundError:
            return []
        except (OSError, csv.Error, UnicodeDecodeError, KeyError, ValueError) as e:
            log.warning("could not read %s (%s): the log starts afresh", self.path, e)
            return []


def _finite(v):
    if v is None:
        return None
    v = float(v)
    return round(v, 6) if math.isfinite(v) else None
