"""Class names that differ only in case or spacing (`Ant`, `ant`, `ant `): one class misspelt,
which would otherwise train as several classes that split its photos. `graft train` refuses them
(folders and label files alike) and `graft check` reports them, in the same words."""

from __future__ import annotations

from graft.errors import GraftError


def class_name_clashes(names) -> list[list[str]]:
    """Groups of `names` equal once case is folded and runs of spaces count as one."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(" ".join(name.split()).casefold(), []).append(name)
    return [g for g in groups.values() if len(g) > 1]


def clash_message(groups: list[list[str]], kind: str, fix: str) -> str:
    """One line naming every clash; `kind` is "folders" or "labels", `fix` how to rename them."""
    shown = "; ".join(" and ".join(repr(n) for n in g) for g in groups)
    return (f"class {kind} {shown} differ only in case or spaces, so graft would train them as separate "
            f"classes: rename them to one name ({fix})")


def refuse_clashing_class_names(where, names, kind: str, fix: str) -> None:
    groups = class_name_clashes(names)
    if groups:
        raise GraftError(f"{where}: {clash_message(groups, kind, fix)}")
