"""The benchmarks import graft's internals by name; a moved module must not break them silently
(bench/pipeline_throughput.py imported graft.preprocess for two merges after it moved)."""

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _graft_imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "graft":
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            yield from ((a.name, []) for a in node.names if a.name.split(".")[0] == "graft")


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py")))
def test_every_graft_name_a_benchmark_imports_exists(script):
    for module, names in _graft_imports(BENCH / script):
        m = importlib.import_module(module)
        for name in names:
            assert hasattr(m, name) or importlib.util.find_spec(f"{module}.{name}") is not None, \
                f"{script}: from {module} import {name}"
