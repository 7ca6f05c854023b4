"""First-party plugins are honest examples: they import only public prec names, as a third party must.

The plugins' sources are parsed (not imported): an import of a ``prec._private`` module or of a name starting
with ``_`` from a prec module, or an attribute access ``something._private`` on a prec object, fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = (
    "prec-cpu",
    "prec-cuda",
    "prec-xla",
    "prec-double",
    "prec-example-cpu16",
    "prec-torchao",
    "prec-bnb",
    "prec-lightning",
)
#: Imports allowed although they break the rule; nothing may be added here.
TOLERATED: set[tuple[str, str, str]] = set()


def _sources() -> list[Path]:
    return sorted(path for name in FIRST_PARTY for path in (ROOT / "plugins" / name / "src").rglob("*.py"))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def violations(path: Path) -> list[str]:
    """Every private prec name ``path`` imports or reads."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    relative = "/".join(path.parts[-2:])
    prec_names: set[str] = set()  # local names bound to prec modules or objects
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "prec" or alias.name.startswith("prec."):
                    if any(_private(part) for part in alias.name.split(".")):
                        found.append(f"{relative}:{node.lineno} imports {alias.name}")
                    prec_names.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module != "prec" and not node.module.startswith("prec."):
                continue
            if any(_private(part) for part in node.module.split(".")):
                found.append(f"{relative}:{node.lineno} imports from {node.module}")
            for alias in node.names:
                if (relative, node.module, alias.name) in TOLERATED:
                    continue
                if _private(alias.name):
                    found.append(f"{relative}:{node.lineno} imports {alias.name} from {node.module}")
                prec_names.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(_base_name(base) in prec_names for base in node.bases):
            found += _inherited_private(node, relative)
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in prec_names:
                found.append(f"{relative}:{node.lineno} reads {ast.unparse(node)}")
    return found


def _base_name(node: ast.expr) -> str:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else ""


def _inherited_private(cls: ast.ClassDef, relative: str) -> list[str]:
    """``self._x`` in a subclass of a prec class, where the file never defines ``_x``: a private member of prec."""
    defined = {node.name for node in ast.walk(cls) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    for node in ast.walk(cls):
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, (ast.AnnAssign, ast.AugAssign))
            else []
        )
        for target in targets:
            if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
                defined.add(target.attr)
            elif isinstance(target, ast.Name):
                defined.add(target.id)
    return [
        f"{relative}:{node.lineno} reads self.{node.attr} (a private member of a prec base class)"
        for node in ast.walk(cls)
        if isinstance(node, ast.Attribute)
        and _private(node.attr)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
        and node.attr not in defined
    ]


@pytest.mark.parametrize("path", _sources(), ids=lambda path: "/".join(path.parts[-3:]))
def test_plugin_uses_only_public_prec_names(path: Path) -> None:
    assert violations(path) == []


def test_the_checker_catches_private_use(tmp_path: Path) -> None:
    source = tmp_path / "pkg" / "mod.py"
    source.parent.mkdir()
    source.write_text(
        "import prec\nimport prec._warnings\nfrom prec._warnings import warn\nfrom prec.precision.mixed import"
        " _check_scaler\nfrom prec.precision import MixedPrecision\nprec._LAZY\nMixedPrecision._HALF\n"
        "prec.precision._x\nother._fine\nclass P(MixedPrecision):\n    def f(self):\n        self._own = 1\n"
        "        return self._own, self._unscaled\n",
        encoding="utf-8",
    )
    found = violations(source)
    assert len(found) == 7, found
    assert any("self._unscaled" in item for item in found)
    assert not any("other._fine" in item for item in found)
