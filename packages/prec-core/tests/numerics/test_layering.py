"""prec.numerics is an engine the Trainer, a callback and the CLI build on: it imports torch, the standard library
and a few leaf modules of prec only (the rule import-linter checks)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import prec.numerics

ALLOWED_PREC = {"prec.errors", "prec.names", "prec.options", "prec._warnings"}
PACKAGE = Path(prec.numerics.__file__).parent


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_numerics_imports_only_torch_the_standard_library_and_leaf_modules_of_prec() -> None:
    found = {}
    for path in sorted(PACKAGE.glob("*.py")):
        for name in _imports(path):
            root = name.partition(".")[0]
            if name.startswith("prec.numerics") or name in ALLOWED_PREC or name == "__future__":
                continue
            if root in {"torch", "typing_extensions"} or root in sys.stdlib_module_names:
                continue
            if root == "matplotlib" and path.name == "plot.py":  # optional, imported inside plot_heatmap only
                continue
            found.setdefault(path.name, []).append(name)
    assert not found, found
