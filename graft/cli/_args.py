"""What several sub-commands share: options made from training's settings, option groups, aligned
tables."""

from __future__ import annotations

import argparse
import math


def setting_args(p, names=None) -> None:
    """Options for graft.train's settings (all, or those `names`), each made from its TrainConfig
    field: flags, default, type, choices, metavar and help are the field's (graft.recipe.settings).
    Off-by-default switches are `--flag`; on-by-default ones `--flag/--no-flag`; an option whose
    setting has a `parse` takes text (read by settings_given)."""
    from graft.recipe.settings import flags, help_text

    for f in _settings(names):
        spec = f.metadata  # the setting's flag, type and help (graft.recipe.settings)
        options = {"dest": f.name, "default": f.default, "help": help_text(f)}
        if isinstance(f.default, bool):
            options["action"] = argparse.BooleanOptionalAction if f.default else "store_true"
        else:
            options.update({k: spec[k] for k in ("type", "choices", "metavar") if k in spec})
            if "type" not in options and "parse" not in spec and type(f.default) in (int, float):
                options["type"] = type(f.default)
        p.add_argument(*flags(f), **options)


def settings_given(args, names=None) -> dict:
    """The settings `setting_args` made options for, as graft.train takes them: text that has a
    form of its own (`parse`: --budget 2m, --workers auto) read here, so a bad one is one line."""
    values = {}
    for f in _settings(names):
        value, parse = getattr(args, f.name), f.metadata.get("parse")
        values[f.name] = parse(value) if parse is not None and isinstance(value, str) else value
    return values


def workers_given(args) -> int | None:
    """--workers (TrainConfig's setting, which every command that reads photos takes): None for auto."""
    return settings_given(args, ["workers"])["workers"]


def _settings(names):
    from dataclasses import fields

    from graft.recipe.config import TrainConfig  # here: the settings import numpy, which `graft --help` does not

    chosen = [f for f in fields(TrainConfig) if "no_flag" not in f.metadata and (names is None or f.name in names)]
    if names is not None and len(chosen) != len(names):
        raise KeyError(f"no option for the setting(s) {set(names) - {f.name for f in chosen}}")
    return chosen


def run_arg(p, help: str | None = "run folder written by graft train") -> None:
    """The RUN positional (stored as `run_dir`: `main` is the sub-command's function, and graft.run
    a package)."""
    p.add_argument("run_dir", metavar="RUN", help=help)


def weights_arg(p) -> None:
    p.add_argument("--weights", metavar="FILE", help="backbone weights file, if not where training found it")


def cache_dir_arg(p, what: str = "feature cache to reuse (default as for train)") -> None:
    p.add_argument("--cache-dir", metavar="DIR", help=what)


def engine_arg(p) -> None:
    p.add_argument("--engine", default="auto", choices=("auto", "onnx", "torch"),
                   help="what runs the network: auto (default: RUN's ONNX export while it is fresh, which "
                   "starts without torch; else torch), onnx (that export, or an error), torch")


def tta_arg(p) -> None:
    p.add_argument("--tta", choices=("none", "flip", "crops"), default="none",
                   help="test-time augmentation: none (default: the centre crop), flip (the mean of the centre "
                   "crop's logits and its left-right mirror's: twice the forward passes) or crops (the centre and "
                   "four corner crops: five times); off by default: neither helped on hymenoptera (bench/tta.py)")


def output_args(p, json_help: str = "print the result as JSON on stdout") -> None:
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or summary")
    p.add_argument("--json", action="store_true", help=json_help)


def table(rows) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def per_class_table(per_class: dict) -> str:
    width = max(5, *(len(c) for c in per_class))
    lines = [f"{'class':<{width}}  precision  recall  support"]
    for name, v in per_class.items():
        lines.append(f"{name:<{width}}  {v['precision']:>9.3f}  {v['recall']:>6.3f}  {v['support']:>7d}")
    return "\n".join(lines)


def format_bytes(n: float) -> str:
    """Bytes as people read them: 129.4 MB."""
    for unit in ("B", "KB", "MB", "GB"):
        if round(n, 1) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


# --- numbers checked as argparse reads them (issue 22, finding 13) ------------------------------------
# Each type raises GraftError, which graft.cli.main prints as one line (argparse's own refusals print
# the usage too): `--port 99999` is refused before anything loads, not when the socket is bound.

def whole(flag: str, lo: int, hi: int):
    """An argparse type: a whole number in [lo, hi]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            raise _refused(flag, f"a whole number from {lo} to {hi}", text)
        return value

    return parse


def number(flag: str, lo: float, hi: float, *, above: bool = False):
    """An argparse type: a finite number in [lo, hi] (`above`: in (lo, hi]); nan and inf refused."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (value > lo if above else value >= lo) and value <= hi):
            raise _refused(flag, f"a number {'above' if above else 'from'} {lo:g} {'and at most' if above else 'to'} "
                           f"{hi:g}", text)
        return value

    return parse


def size(flag: str, lo: int, hi: int):
    """An argparse type: a size like 20MB or 512KB (graft._util.sizes), in [lo, hi] bytes."""
    def parse(text: str) -> int:
        from graft._util.sizes import parse_size

        value = parse_size(text, flag)
        if not lo <= value <= hi:
            raise _refused(flag, f"a size from {format_bytes(lo)} to {format_bytes(hi)}", text)
        return value

    return parse


def _refused(flag: str, what: str, text: str):
    from graft.errors import GraftError

    return GraftError(f"{flag} must be {what}, got {text!r}")
