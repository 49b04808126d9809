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


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # the first word that is not an option names the sub-command (graft's own options take no value)
    command = next((a for a in argv if not a.startswith("-")), "")
    args = build_parser(command).parse_args(argv)
    _setup_logging()
    from graft.errors import GraftError

    try:
        status = args.main(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return status
    except GraftError as e:
        print(f"graft: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("graft: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `graft predict RUN DIR | head -2`: the reader has all it wanted; stop quietly, and keep
        # Python from failing again when it flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def one_line(text: str) -> str:
    """`text` with control characters escaped as Python writes them (a file name holding a newline
    becomes `a\\nb.jpg`), so that one message, or one file, is one line of the output."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


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
