"""Per-epoch training log that a user's usual tools read: `RUN/log.csv` (always) and TensorBoard
event files (`RUN/tensorboard/`, with the optional `tensorboard` package).

metrics.json is the run's summary, written at the end; a fine-tune of minutes to hours needs a
record that grows while it runs. Each epoch appends one row per stage ("head", "finetune"):
losses, accuracy, learning rate, data-wait share and timings. The CSV is rewritten atomically
each epoch (a few hundred rows at most), so a killed run leaves a complete file, never half a
row; a resumed run starts from the rows already on disk.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path

from .._atomic import write_bytes
from ..errors import GraftError

log = logging.getLogger("graft")

LOG_KINDS = ("csv", "tensorboard")
COLUMNS = ["stage", "epoch", "train_loss", "val_loss", "val_accuracy", "lr", "epoch_s", "data_wait_share"]


def parse_log_kinds(value) -> tuple[str, ...]:
    """"csv", "tensorboard", "csv,tensorboard", or a sequence of those; csv is always written."""
    if value is None or value == "":
        return ("csv",)
    kinds = [k.strip().lower() for k in (value.split(",") if isinstance(value, str) else value) if k.strip()]
    unknown = [k for k in kinds if k not in LOG_KINDS]
    if unknown:
        raise GraftError(f"--log: unknown kind(s) {', '.join(unknown)}; use {', '.join(LOG_KINDS)}")
    return tuple(dict.fromkeys(["csv", *kinds]))


class TrainingLog:
    """`log.epoch("finetune", 3, train_loss=..., val_loss=...)` after each epoch."""

    def __init__(self, run_dir, kinds=("csv",), *, resume: bool = False):
        self.path = Path(run_dir) / "log.csv"
        self.kinds = parse_log_kinds(kinds)
        self.rows: list[dict] = self._read() if resume else []
        self._tb = None
        if "tensorboard" in self.kinds:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise GraftError("--log tensorboard needs the tensorboard package: "
                                 "pip install 'graft[tensorboard]' (or pip install tensorboard)") from None
            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def epoch(self, stage: str, epoch: int, **scalars) -> None:
        row = {"stage": stage, "epoch": int(epoch)}
        row.update({k: _finite(v) for k, v in scalars.items()})
        self.rows = [r for r in self.rows if (r["stage"], int(r["epoch"])) != (stage, int(epoch))] + [row]
        self._write_csv()
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("stage", "epoch") and v is not None:
                    self._tb.add_scalar(f"{stage}/{k}", v, int(epoch))
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

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
                return [{k: v for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
        except FileNotFoundError:
            return []
        except (OSError, csv.Error, UnicodeDecodeError) as e:
            log.warning("could not read %s (%s): the log starts afresh", self.path, e)
            return []


def _finite(v):
    if v is None:
        return None
    v = float(v)
    return round(v, 6) if math.isfinite(v) else None
