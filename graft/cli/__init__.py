"""`graft` on the command line: one module per sub-command (or group), each a thin shell over the
Python API that owns its arguments and what it prints.

Each module offers `HELP` (its line in `graft --help`), `add_parser(subparsers)`, which registers
its sub-command with `set_defaults(main=<its main>)`, and `main(args) -> exit status`; this
package's `main(argv)` parses and calls `args.main(args)`. It builds the options of the one
sub-command on its command line only (the others are listed by their HELP), and the modules import
what their command needs when it runs: `graft --help`, `graft train --help`, `graft augment list` or
`graft cache` never import torch (seconds), `graft predict` on a run with a fresh ONNX export neither.
Errors the user can fix (GraftError) print one line and exit with status 2, no traceback;
warnings (skipped files) print one line each; progress bars go to stderr and `--quiet` hides them.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from graft._util.output import one_line
from graft.cli import augment, cache, calibrate, check, demo, evaluate, export, predict, report, serve, train

COMMANDS = {m.__name__.rsplit(".", 1)[1]: m for m in (train, predict, evaluate, augment, check, export, calibrate,
                                                       report, cache, serve, demo)}

EPILOG = """examples:
  graft train PHOTOS --out runs/cats        train on PHOTOS/<class>/* (or PHOTOS/train + PHOTOS/val)
  graft predict runs/cats some.jpg          top-3 classes with probabilities
  graft evaluate runs/cats PHOTOS/val       accuracy, per-class figures, confusion matrix
  graft demo                                the whole pipeline on a small built-in photo set
  graft augment list                        augmentation presets and their knobs
  graft augment preview PHOTOS -o grid.png  see what each augmentation op does
  graft check PHOTOS                        find broken, duplicate, leaked, mislabelled photos
  graft report runs/cats --photos PHOTOS    RUN/report.html: curves, confusion, worst photos
  graft calibrate runs/cats PHOTOS          fit the "unknown" threshold for predict --reject auto
  graft predict runs/cats DIR --csv out.csv --reject auto
  graft export runs/cats --format onnx      ONNX / TorchScript with the same probabilities
  graft serve runs/cats                     HTTP service and a web page on http://127.0.0.1:8000
"""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line. `command`: build only that sub-command's options (any other is listed
    with its HELP and cannot be parsed); None: every sub-command's."""
    from graft._version import __version__

    p = argparse.ArgumentParser(
        prog="graft",
        description="Turn a folder of photos into an image classifier by transfer learning: a "
        "pretrained network with a new softmax, trained on features cached on disk.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"graft {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        if command is None or name == command:
            module.add_parser(sub)
        else:
            sub.add_parser(name, help=module.HELP)
    return p


def run() -> None:
    """The `graft` command and `python -m graft`: main() on sys.argv, then the process leaves
    without the interpreter's teardown of every module (graft._util.exit.leave: why, and what
    still runs). main(argv) returns instead, for callers in Python."""
    from graft._util.exit import leave

    leave(main())


def main(argv=None) -> int:
    from graft._util.output import tolerant_std_streams

    tolerant_std_streams()  # a file name's undecodable bytes are printed escaped, never a crash
    argv = sys.argv[1:] if argv is None else list(argv)
    # the first word that is not an option names the sub-command (graft's own options take no value)
    command = next((a for a in argv if not a.startswith("-")), "")
    from graft.errors import GraftError

    try:  # an option's type (graft.cli._args: --port 99999) refuses with a GraftError while parsing
        args = build_parser(command).parse_args(argv)
        _setup_logging()
        status = args.main(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return status
    except GraftError as e:
        _end_progress_bars()
        print(f"graft: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _end_progress_bars()
        print("graft: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `graft predict RUN DIR | head -2`: the reader has all it wanted; stop quietly, and keep
        # Python from failing again when it flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except (OSError, RuntimeError) as e:  # after BrokenPipeError, an OSError too
        said = file_size_limit(e)
        if said is None:
            raise
        _end_progress_bars()
        print(f"graft: error: {said}", file=sys.stderr)
        return 2


def file_size_limit(e: BaseException) -> str | None:
    """The one line for a write stopped by a file-size limit (`ulimit -f`: EFBIG, or torch's
    DataLoader workers failing to size their shared-memory batches, "File too large"), else None.
    Python ignores SIGXFSZ, so the limit shows as that error wherever a write crossed it."""
    import errno
    import resource

    if not (getattr(e, "errno", None) == errno.EFBIG or "File too large" in str(e)):
        return None
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit == resource.RLIM_INFINITY:
        return None
    return (f"a file-size limit of {limit // 1024} KB (ulimit -f) stopped a write graft needs (its cache, its "
            f"outputs and its loader's shared batches are files): raise it, e.g. `ulimit -f unlimited`")


def _end_progress_bars() -> None:
    """Close the progress bars an error left drawn, and start a fresh line, so the error is a line
    of its own instead of being glued onto `extracting features:  40%|####  | 8/20` (issue 22): a
    bar ends with a carriage return, which a terminal honours and a log file does not."""
    tqdm = sys.modules.get("tqdm")
    live = [bar for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())) if not bar.disable]
    for bar in live:
        try:
            bar.close()
        except Exception:  # a bar of a closed stream: nothing left to end
            pass
    if live and not sys.stderr.isatty():
        sys.stderr.write("\n")
    sys.stderr.flush()


class _OneLineFormatter(logging.Formatter):
    def format(self, record):
        return one_line(super().format(record))


def _setup_logging():
    import logging

    log = logging.getLogger("graft")
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(_OneLineFormatter("graft: %(levelname)s: %(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO)
        log.propagate = False


if __name__ == "__main__":
    sys.exit(main())
