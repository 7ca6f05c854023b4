"""No module reads another module's private members: each module's state has one owner.

The rule, checked on the source of prec-core and of every first-party plugin:

* ``from prec.x import _name`` from another module is a violation (a private name is its module's own; a private
  *module* such as ``prec.plugin._verify`` is the package's, and its public names are for the package to use);
* ``obj._name`` where ``obj`` is not ``self``/``cls`` is a violation when ``_name`` is a private member that prec
  itself defines (assigned as ``self._name``, or defined in a class or module body): it reaches into another
  object's state. Private members of third-party objects (torch's) are not prec's to tidy: where prec must touch
  one, the line carries a comment that says why, and it is not counted here.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "packages" / "prec-core" / "src", *sorted((ROOT / "plugins").glob("*/src"))]
OWN = {"self", "cls"}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _files() -> list[Path]:
    return [path for source in SOURCES for path in sorted(source.rglob("*.py"))]


def _defined_private_names(trees: dict[Path, ast.Module]) -> set[str]:
    names: set[str] = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and _private(node.attr):
                if isinstance(node.value, ast.Name) and node.value.id in OWN:
                    names.add(node.attr)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and _private(node.name):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name) and _private(target.id):
                        names.add(target.id)
    return names


def _violations(trees: dict[Path, ast.Module] | None = None) -> list[str]:
    if trees is None:
        trees = {path: ast.parse(path.read_text(encoding="utf-8"), str(path)) for path in _files()}
    ours = _defined_private_names(trees)
    found: list[str] = []
    for path, tree in trees.items():
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        base_calls = {
            id(call.func)
            for call in ast.walk(tree)
            if isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.args
            and isinstance(call.args[0], ast.Name)
            and call.args[0].id in OWN
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0].startswith("prec"):
                for alias in node.names:
                    # A private module of the package (``from prec import _verify``) is the package's own.
                    module_file = path.parent / f"{alias.name}.py"
                    if _private(alias.name) and not module_file.exists():
                        found.append(f"{where}:{node.lineno}: imports {node.module}.{alias.name}")
            elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr in ours:
                if id(node) in base_calls:  # ``Base._method(self, ...)``: an explicit super() call, the object's own
                    continue
                owner = node.value
                if isinstance(owner, ast.Name) and owner.id in OWN:
                    continue
                if ast.unparse(owner).split(".")[0] == "torch":  # torch's own class named explicitly: torch's member
                    continue
                if (
                    isinstance(owner, ast.Call)
                    and isinstance(owner.func, ast.Name)
                    and owner.func.id in {"super", "type"}
                ):
                    continue
                found.append(f"{where}:{node.lineno}: reads {ast.unparse(node)}")
    return found


def test_no_module_reads_another_modules_private_members() -> None:
    assert _violations() == []


def test_the_check_finds_a_violation(tmp_path: Path) -> None:
    """The rule is not vacuous: both patterns are reported, and an object's own access is not."""
    owner = ast.parse(
        "class A:\n    def __init__(self):\n        self._state = 1\n    def get(self):\n        return self._state\n"
    )
    reader = ast.parse("from prec.a import _helper\n\ndef peek(a):\n    return a._state\n")
    found = _violations({tmp_path / "a.py": owner, tmp_path / "b.py": reader})
    assert [line.split(": ", 1)[1] for line in found] == ["imports prec.a._helper", "reads a._state"]
