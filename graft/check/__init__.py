"""`graft check`: scan a photo folder before training and report every problem, file by file.

The scan reads the folder exactly as `graft train` will (graft.data: the same walk, the same
header probe, the same content-hash train/val split), then looks further:

- quick (always): files that cannot be used (empty, undecodable, truncated, content not matching
  the extension, over Pillow's decompression-bomb limit or declaring far more pixels than their
  bytes can hold, absurd aspect ratios, symlink loops), classes left empty,
  photos that sit in both train and val (identical bytes or the same picture by perceptual
  hash: leakage), duplicates and near-duplicates within a split, animated images, unusual
  modes, EXIF rotation, tiny images, hidden files, class imbalance.
  It probes headers, hashes the bytes and decodes each image once at reduced size (a full
  decode is the only way to find truncated data; JPEGs decode in the DCT domain at 1/8 scale).
- deep (default, `--quick` skips it): placeholder and non-photo images ("image not found"
  pictures, near-constant or flat graphics) from pixel statistics, and, on the features `graft
  train` caches (graft.check.deep), photos of neither class (graft.check.foreign: a cup in
  bees/, listed first of all findings) and photos that are likely mislabelled
  (graft.check.mislabel).

Every finding is {"level", "code", "path", "message"}; a file has at most one finding per code.
`graft train` skips what check calls an error file by file: the scan refuses what its probe
does, `skip_quick_errors` what the scan's sizes and hashes show, graft.data.placeholders'
`RefuseNonPhotos` the placeholders, on the pixels feature extraction decodes anyway.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from graft._util.output import one_line
from graft.data.folder import VAL_SPLIT, Dataset
from graft.data.source import photo_layout
from graft.data.placeholders import non_photo_reason
from graft.errors import GraftError
from graft.check.duplicates import exact_leaks, find_duplicates, leak_reason
from graft.check.deep import deep_features
from graft.check.findings import CODES, FIRST, LEVELS, Findings, relative
from graft.check.foreign import find_foreign
from graft.check.inspect import extreme_aspect, inspect
from graft.check.mislabel import find_mislabelled, neighbour_agreement, oof_probabilities
from graft.check.walk import assign_splits, class_checks, collect, collect_listed

__all__ = ["CODES", "LEVELS", "check_photos", "format_report", "quick_errors", "skip_quick_errors",
           "neighbour_agreement", "oof_probabilities"]

DEFAULT_INPUT_SIZE = 224
GROUPED_LEVELS = ("info",)  # notes that repeat word for word print as one line with a count


def check_photos(photos, *, deep: bool = True, cache_dir=None, backbone="default", val_split: float = VAL_SPLIT,
                 progress: bool = False, workers: int | None = None, input_size: int | None = None) -> dict:
    """Scan `photos` (a folder or label file `graft train` accepts) and report its problems; see
    the module doc.

    Returns {"root", "layout", "classes", "counts": {class: {"train", "val"}}, "findings":
    [{"level", "code", "path", "message"}], "summary": {"errors", "warnings", "infos"}}.
    `backbone` (a spec or a built Backbone) gives the features of the deep check and the input
    size the messages about tiny and extreme images quote (`input_size` overrides it; a quick
    check of a backbone other than the default assumes 224 rather than resolve its weights);
    `workers` is the number of decoding processes for feature extraction (default: automatic).
    """
    root, layout = photo_layout(photos, val_split)
    if layout == "labels":  # paths in messages are relative to the file's folder, as in the file
        findings = Findings(root.parent)
        classes, files, layout = collect_listed(root, findings)
    else:
        findings = Findings(root)
        classes, files = collect(root, layout, findings)
    input_size = int(input_size or _input_size(backbone, resolve=deep))

    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        list(pool.map(lambda f: inspect(f, input_size), files))

    for f in files:
        for code, message in f.problems:
            findings.add(code, f.path, message)
    assign_splits(files, len(classes), layout, val_split)
    counts = {c: {"train": 0, "val": 0} for c in classes}
    for f in files:
        if f.usable:
            counts[f.cls][f.split] += 1
    class_checks(root, layout, files, counts, findings)
    non_photos = _non_photos(files, findings) if deep else set()
    find_duplicates(files, findings, skip=non_photos)
    if deep:
        features = deep_features(files, classes, findings, skip=non_photos, backbone=backbone,
                                 cache_dir=cache_dir, progress=progress, workers=workers)
        if features is not None:
            find_foreign(features, findings)
            find_mislabelled(features, findings)

    items = findings.sorted()
    summary = {"errors": sum(d["level"] == "error" for d in items),
               "warnings": sum(d["level"] == "warning" for d in items),
               "infos": sum(d["level"] == "info" for d in items)}
    return {"root": str(root), "layout": layout, "classes": classes, "counts": counts,
            "deep": bool(deep), "findings": items, "summary": summary}


def _input_size(backbone, resolve: bool) -> int:
    if backbone is None or (isinstance(backbone, str) and backbone == "default"):
        from graft.backbones import DEFAULT_PREPROCESSING

        return DEFAULT_PREPROCESSING.size
    pre = getattr(backbone, "preprocessing", None)
    if pre is not None:
        return int(pre.size)
    if not resolve:
        return DEFAULT_INPUT_SIZE
    try:
        from graft.backbones import resolve_backbone

        return int(resolve_backbone(backbone).preprocessing.size)
    except GraftError:
        return DEFAULT_INPUT_SIZE


def _non_photos(files, findings: Findings) -> set[str]:
    flagged = set()
    for f in files:
        why = non_photo_reason(f.stats) if f.usable and f.stats else None
        if why:
            findings.add("not_a_photo", f.path, why + "; remove it")
            flagged.add(f.rel)
    return flagged


# --- what graft train skips on the way --------------------------------------------------------------

def quick_errors(data: Dataset, *, input_size: int = DEFAULT_INPUT_SIZE) -> list[dict]:
    """Files of a scanned `data` that graft check calls errors and the scan alone shows (no decode).

    An aspect ratio beyond 20:1 (from the header size the scan read) and a validation photo with
    the bytes of a training photo (content hash; only a train/ + val/ layout can have one).
    Returns [{"path", "reason", "code"}] in graft check's codes. What else check calls an error
    in one file is refused by the scan's probe or the feature decode (ImageError), and the
    placeholders by graft.data.placeholders.RefuseNonPhotos.
    """
    out = []
    for s in data.train + data.val:
        why = extreme_aspect(s.size, input_size)
        if why:
            out.append({"path": str(s.path), "reason": why, "code": "extreme_aspect"})
    too_wide = {e["path"] for e in out}
    for v, t in exact_leaks([s for s in data.train if str(s.path) not in too_wide], data.val):
        if str(v.path) not in too_wide:
            out.append({"path": str(v.path), "reason": leak_reason(t.path), "code": "leakage"})
    return out


def skip_quick_errors(data: Dataset, *, input_size: int = DEFAULT_INPUT_SIZE) -> Dataset:
    """`data` without the files `quick_errors` names; they join `data.skipped`, with their reasons."""
    errors = quick_errors(data, input_size=input_size)
    if not errors:
        return data
    bad = {e["path"] for e in errors}
    return replace(data, train=[s for s in data.train if str(s.path) not in bad],
                   val=[s for s in data.val if str(s.path) not in bad], skipped=data.skipped + errors)


# --- as text ----------------------------------------------------------------------------------------

def format_report(report: dict) -> str:
    """The report as text: counts per class, photos of neither class, then the other findings
    grouped by level, one line each (notes that repeat word for word, a hundred loose files say,
    as one line with a count)."""
    lines = [one_line(f"checked {report['root']} ({report['layout']} layout"
                      + ("" if report.get("deep", True) else ", quick") + ")")]
    counts = report["counts"]
    if counts:
        width = max(5, *(len(c) for c in counts))
        lines.append(f"  {'class':<{width}}  train    val")
        for c, n in counts.items():
            lines.append(f"  {c:<{width}}  {n['train']:>5}  {n['val']:>5}")
    first = [d for d in report["findings"] if d["code"] in FIRST]
    if first:  # what graft would train on without a word: before the errors it skips by itself
        lines += ["", f"photos of neither class ({len(first)}), most foreign first: look at these first"]
        lines += [one_line(f"  {d['level']}: [{d['code']}] {d['message']}") for d in first]
    for level, title in (("error", "errors"), ("warning", "other warnings" if first else "warnings"),
                         ("info", "notes")):
        items = [d for d in report["findings"] if d["level"] == level and d["code"] not in FIRST]
        if not items:
            continue
        lines.append("")
        lines.append(f"{title} ({len(items)}):")
        groups = _repeats(items, _base(report)) if level in GROUPED_LEVELS else [[d] for d in items]
        for group in groups:
            d = group[0]
            if len(group) == 1:
                lines.append(one_line(f"  {level}: [{d['code']}] {d['message']}"))
                continue
            names = ", ".join(relative(g["path"], _base(report)) for g in group[:3])
            more = f" and {len(group) - 3} more" if len(group) > 3 else ""
            lines.append(one_line(f"  {level}: [{d['code']}] {len(group)} files ({names}{more}): "
                                  f"{_problem(d, _base(report))}"))
    s = report["summary"]
    lines.append("")
    lines.append(f"{s['errors']} error(s), {s['warnings']} warning(s)"
                 + (": fix the errors before training" if s["errors"] else ""))
    return "\n".join(lines)


def _base(report: dict) -> Path:
    """What finding messages are relative to: the folder checked, or a label file's folder."""
    root = Path(report["root"])
    return root.parent if report["layout"].startswith("labels") else root


def _problem(finding: dict, root: Path) -> str:
    """The message without the file it names (Findings.add writes "<relative path>: <problem>")."""
    return finding["message"].removeprefix(relative(finding["path"], root) + ": ")


def _repeats(items: list[dict], root: Path) -> list[list[dict]]:
    """Findings grouped by (code, problem), in first-seen order."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for d in items:
        groups.setdefault((d["code"], _problem(d, root)), []).append(d)
    return list(groups.values())
