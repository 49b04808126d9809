"""The shape of the package, held by a test so that it cannot drift back: short files, short
functions, a top level that is mostly packages, a layer contract of a dozen layers at most, and
model.json read in one place. (`lint-imports` checks the layers themselves and `ruff` the
complexity of each function; both run in the README's test command.)"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "graft"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80
MAX_TOP_LEVEL_MODULES = 8
MAX_LAYERS = 12


def _modules():
    return sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_no_file_over_the_bound():
    long = {_name(p): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert long == {}, f"files over {MAX_FILE_LINES} lines: split them by job"


def _functions(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_function_over_the_bound():
    long = {}
    for path in _modules():
        for fn in _functions(ast.parse(path.read_text())):
            start = min([fn.lineno, *(d.lineno for d in fn.decorator_list)])
            if (n := fn.end_lineno - start + 1) > MAX_FUNCTION_LINES:
                long[f"{_name(path)}:{fn.lineno} {fn.name}"] = n
    assert long == {}, f"functions over {MAX_FUNCTION_LINES} lines"


def test_the_measure_sees_a_long_function():
    """The two bounds above count what they claim (a guard on the guard)."""
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    fn = next(_functions(ast.parse(f"def f():\n{body}\n")))
    assert fn.end_lineno - fn.lineno + 1 == MAX_FUNCTION_LINES + 1


def test_top_level_is_packages():
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, modules
    packages = [p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()]
    assert len(packages) >= 10


def test_layer_contract_is_short_and_names_packages():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    layered = [c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    assert len(layered) == 1
    layers = layered[0]["layers"]
    assert len(layers) <= MAX_LAYERS, layers
    for layer in layers:
        for name in re.split(r"\s*[|:]\s*", layer):
            path = ROOT / Path(*name.split("."))
            assert (path / "__init__.py").is_file() or path.with_suffix(".py").is_file(), name


# model.json is read through graft.run.record alone; the exported client is standalone by design
# (it becomes a user's predict_onnx.py and imports nothing of graft).
_MODEL_JSON_READERS = {"graft/run/record.py", "graft/use/export_client.py"}


def test_model_json_is_read_in_one_place():
    reads = re.compile(r"\bmeta(\[|\.get\()")
    found = [f"{_name(p)}:{i}" for p in _modules() if _name(p) not in _MODEL_JSON_READERS
             for i, line in enumerate(p.read_text().splitlines(), 1) if reads.search(line)]
    assert found == [], "read model.json through graft.run.record's typed record"
