"""How a training setting is written once: `setting(default, help, ...)` makes a TrainConfig field
whose metadata holds everything else said about it, so `graft.train`'s keywords and docstring and
`graft train`'s options (graft/cli/_args.py) are all made from the fields. Also here: the text
forms some settings take on the command line.

Metadata (all but `help` only where needed):
  help     what the setting does; "{default}" in it is the field's default
  flags    the option's names when not --<name-with-dashes> (("--backbone", "-b"))
  type, choices, metavar   as argparse takes them (type: when not the default's own type)
  parse    the option's text -> the value, after argparse: a bad value is graft's one-line error
  valid    a Range: what validate() accepts (None, "the trainer's own", always passes)
  no_flag  why the setting has no option
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import math
import textwrap
import typing
from dataclasses import dataclass, field, fields
from typing import Callable

from graft.errors import GraftError


def setting(default, help: str, **meta):
    """A TrainConfig field: its default beside its help and its command-line details."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class Range:
    """The values a numeric setting accepts, and how a refusal says so."""

    ok: Callable[[object], bool]
    says: str  # "a whole number >= 1"
    whole: bool = False  # an int, not a float (nor a bool)
    words: tuple = ()  # texts accepted as they are ("auto")

    def holds(self, value) -> bool:
        if value is None or value in self.words:
            return True
        whole = isinstance(value, int) and not isinstance(value, bool)
        number = whole or (isinstance(value, float) and not self.whole)
        return number and self.ok(value)


WHOLE_FROM_1 = Range(lambda v: v >= 1, "a whole number >= 1", whole=True)
WHOLE_FROM_0 = Range(lambda v: v >= 0, "a whole number >= 0", whole=True)
SHARE = Range(lambda v: 0 < v < 1, "a number in (0, 1)")
POSITIVE = Range(lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
NOT_NEGATIVE = Range(lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")


def flags(f) -> tuple[str, ...]:
    """The option's names: --<name-with-dashes> unless the field says otherwise."""
    return f.metadata.get("flags") or ("--" + f.name.replace("_", "-"),)


def help_text(f) -> str:
    return f.metadata["help"].format(default=f.default)


# --- the command line's text forms ---------------------------------------------------------------------

def views_count(text: str):
    """--aug-views: "auto" or a whole number (argparse says which, in one line, otherwise)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a whole number, got {text!r}") from None


def parse_seconds(text: str) -> float:
    """--budget: 90, 90s, 2m, 1h."""
    mult = {"s": 1, "m": 60, "h": 3600}.get(text[-1:].lower(), None)
    try:
        value = float(text[:-1] if mult else text) * (mult or 1)
    except ValueError:
        raise GraftError(f"--budget takes seconds like 90, 90s or 2m, got {text!r}") from None
    if value <= 0:
        raise GraftError(f"--budget must be positive, got {text!r}")
    return value


def parse_hidden_sizes(text: str) -> tuple:
    """--new-hidden: "512" or "512,256"."""
    try:
        sizes = tuple(int(h) for h in text.split(",") if h.strip())
    except ValueError:
        raise GraftError(f"--new-hidden takes sizes like 512 or 512,256, got {text!r}") from None
    if any(h <= 0 for h in sizes):
        raise GraftError(f"--new-hidden sizes must be positive, got {text!r}")
    return sizes


def worker_count(value) -> int | None:
    """--workers (of every command that reads photos): "auto" (None: chosen from the machine) or a
    number >= 0."""
    if value in (None, "auto"):
        return None
    try:
        n = int(value)
        if n < 0:
            raise ValueError
        return n
    except ValueError:
        raise GraftError(f"--workers must be 'auto' or a number >= 0, got {value!r}") from None


# --- a function that takes the settings as keywords ---------------------------------------------------

def takes_settings(config):
    """Decorator for `fn(..., **settings)` that builds a `config`: its signature shows every field
    as a keyword-only parameter with its default and type (help(), inspect, editors that read
    __signature__) and its docstring lists them with their help."""

    def decorate(fn):
        hints = typing.get_type_hints(config)
        signature = inspect.signature(fn)
        params = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                     annotation=hints[f.name]) for f in fields(config)]
        fn.__signature__ = signature.replace(parameters=params, return_annotation=typing.get_type_hints(fn).get(
            "return", signature.return_annotation))
        fn.__doc__ = (fn.__doc__ or "").rstrip() + "\n\n" + settings_doc(config)
        return fn

    return decorate


def settings_doc(config) -> str:
    lines = [f"    Settings ({config.__module__}.{config.__name__}; `graft train --help` shows each as an option):"]
    for f in fields(config):
        note = f" (no option: {f.metadata['no_flag']})" if "no_flag" in f.metadata else ""
        lines.append(textwrap.fill(f"{f.name}={f.default!r}: {help_text(f)}{note}", width=100,
                                   initial_indent="      ", subsequent_indent="          "))
    return "\n".join(lines) + "\n"


def unknown_setting(name: str, names: list[str]) -> str:
    """The one line that refuses a keyword that is no setting, naming those that are."""
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown setting {name!r}{hint}; the settings are: {', '.join(names)}"
