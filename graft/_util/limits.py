"""Bounds on what graft parses from files someone else may have written: label files, a run's
JSON files. Python's own parsers have none that fail cleanly: 200,000 `[` make json.loads raise
RecursionError, a 5,000-digit integer a ValueError from int(), a CSV field over 131,072
characters a `_csv.Error`. Here each is a `LimitError` (a ValueError) that says which bound, so
the reader of the file turns it into one line naming the file.

No file graft writes comes near these bounds: a model.json is 4 levels deep, its largest
integer a few digits long.
"""

from __future__ import annotations

import csv
import json

MAX_DEPTH = 64  # nested lists and objects
MAX_INT_DIGITS = 64  # digits of one integer (a 64-bit seed has 20)
MAX_JSON_BYTES = 64 << 20  # one JSON document graft reads whole (a run's model.json is a few KB)
MAX_CSV_FIELD = csv.field_size_limit()  # Python's own bound (131,072), now one line rather than _csv.Error


class LimitError(ValueError):
    """A document over one of the bounds above; the message names the bound."""


def _int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise LimitError(f"an integer of {digits} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def loads(text: str | bytes):
    """json.loads within MAX_DEPTH levels of nesting and MAX_INT_DIGITS digits an integer;
    ValueError (json.JSONDecodeError or LimitError) otherwise."""
    try:
        obj = json.loads(text, parse_int=_int)
    except RecursionError:
        raise LimitError(f"nested deeper than {MAX_DEPTH} levels") from None
    check_depth(obj)
    return obj


def check_depth(obj) -> None:
    """LimitError when `obj` (parsed JSON) nests lists and dicts deeper than MAX_DEPTH; iterative,
    so no depth makes it recurse."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > MAX_DEPTH:
            raise LimitError(f"nested deeper than {MAX_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children)


def csv_dict_rows(lines, first_line: int = 2):
    """(line number, row dict) of csv.DictReader over `lines` (the header first); csv's errors
    (a field over MAX_CSV_FIELD characters, a NUL byte) as LimitError naming the line. Returns
    (fieldnames, rows)."""
    reader = csv.DictReader(lines)
    rows = []
    try:
        fieldnames = reader.fieldnames
        for n, row in enumerate(reader, first_line):
            rows.append((n, row))
    except csv.Error as e:
        at = reader.line_num
        raise LimitError(f"line {at}: {_csv_reason(e)}") from None
    return fieldnames, rows


def _csv_reason(e: csv.Error) -> str:
    text = str(e)
    if "field larger than field limit" in text:
        return f"a field longer than {MAX_CSV_FIELD:,} characters"
    return f"not valid CSV ({text})"
