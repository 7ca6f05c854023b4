"""Loading a Python file of this repository as a module, by its path.

pytest runs with ``--import-mode=importlib``, so one test module cannot import another by name: the distributed
tests share their launch helpers, and the docs tests load MkDocs' build hooks, through :func:`load_module`.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

TESTS = Path(__file__).parent


def load_module(path: Path, name: str) -> ModuleType:
    """The file at ``path``, executed as a fresh module called ``name`` (registered in ``sys.modules``, where
    dataclasses look their module up while the file executes)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def sibling(filename: str) -> ModuleType:
    """Another test module of this folder, e.g. ``sibling("test_distributed_safety.py")`` for its launch helpers."""
    return load_module(TESTS / filename, f"_prec_tests_{Path(filename).stem}")
