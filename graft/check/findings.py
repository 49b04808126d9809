"""What `graft check` reports: stable codes, their levels, and at most one finding per file per code."""

from __future__ import annotations

from pathlib import Path

# code -> level. Stable: scripts may rely on these.
CODES = {
    # errors: graft cannot use the file, or training would be wrong
    "undecodable": "error",
    "truncated": "error",
    "empty_file": "error",
    "extension_mismatch": "error",
    "too_large": "error",
    "extreme_aspect": "error",
    "unreadable": "error",
    "symlink_loop": "error",
    "empty_class": "error",
    "class_mismatch": "error",
    "too_few_classes": "error",
    "class_name_clash": "error",
    "leakage": "error",
    "not_a_photo": "error",
    # warnings: graft uses the file, but probably not as you expect
    "foreign": "warning",  # a photo of neither class: listed before everything else
    "animated": "warning",
    "mode": "warning",
    "exif_rotated": "warning",
    "tiny": "warning",
    "duplicate": "warning",
    "near_duplicate": "warning",
    "class_imbalance": "warning",
    "hidden_file": "warning",
    "likely_mislabelled": "warning",
    "no_validation_image": "warning",
    # info: ignored by graft, or a check that could not run
    "unsupported_type": "info",
    "not_in_class_folder": "info",
    "symlinked_folder": "info",
    "check_skipped": "info",
}
LEVELS = ("error", "warning", "info")
FIRST = ("foreign",)  # codes listed before every level: graft trains on such a photo without a word,
# while it skips what check calls an error by itself


class Findings:
    """The findings of one check of the folder `root`; paths in messages are relative to it."""

    def __init__(self, root: Path):
        self.root = root
        self.items: list[dict] = []
        self._seen: set[tuple[str, str]] = set()
        self._score: dict[tuple[str, str], float] = {}

    def rel(self, path) -> str:
        return relative(path, self.root)

    def add(self, code: str, path, problem: str, *, score: float | None = None) -> None:
        """One finding; a second one with the same code for the same path is dropped. `score`:
        how strongly it holds, to list the strongest of a code first."""
        rel = self.rel(path)
        if (code, rel) in self._seen:
            return
        self._seen.add((code, rel))
        if score is not None:
            self._score[(code, rel)] = score
        self.items.append({"level": CODES[code], "code": code, "path": str(path),
                           "message": f"{rel}: {problem}"})

    def sorted(self) -> list[dict]:
        """The FIRST codes, then errors, warnings, notes; by code, score (strongest first) and path
        within a level."""
        rank = {lvl: i + 1 for i, lvl in enumerate(LEVELS)}

        def key(d):
            score = self._score.get((d["code"], self.rel(d["path"])), 0.0)
            return (0 if d["code"] in FIRST else rank[d["level"]], d["code"], -score, d["path"])
        return sorted(self.items, key=key)


def relative(path, root) -> str:
    """`path` as messages name it: relative to the checked folder when it is inside it."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)
