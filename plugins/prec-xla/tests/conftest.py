"""Fixtures for prec-xla's tests.

``stub_torch_xla`` puts a package named torch_xla with installed metadata first on the path. Importing it raises,
so a test using it proves that nothing imported torch_xla, and its version can be chosen to match torch or not.
It stands in only for what a machine without torch_xla cannot have; the real XLA path is tested in
``test_xla_fit.py`` (the ``xla`` environment).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import pytest

from prec_xla.detect import release

STUB_MESSAGE = "stub torch_xla imported: this code path must not import torch_xla"


def torch_release() -> str:
    """A torch_xla version that matches the installed torch's major.minor."""
    major, minor = release(version("torch")) or (0, 0)
    return f"{major}.{minor}.0"


def other_release() -> str:
    """A torch_xla version that matches no installed torch."""
    major, minor = release(version("torch")) or (0, 0)
    return f"{major}.{minor + 1}.0"


def write_stub(root: Path, stub_version: str) -> Path:
    package = root / "torch_xla"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"raise ImportError({STUB_MESSAGE!r})\n")
    dist_info = root / f"torch_xla-{stub_version}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch_xla\nVersion: {stub_version}\n")
    return root


class StubInstaller:
    """``install(version)`` puts a stub of that version first on ``sys.path`` for the rest of the test."""

    matching = staticmethod(torch_release)
    mismatched = staticmethod(other_release)

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp_path = tmp_path
        self.monkeypatch = monkeypatch

    def __call__(self, stub_version: str) -> Path:
        root = write_stub(self.tmp_path / f"stub-{stub_version}", stub_version)
        self.monkeypatch.syspath_prepend(str(root))
        return root


@pytest.fixture
def stub_torch_xla(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StubInstaller:
    if "torch_xla" in sys.modules:
        monkeypatch.delitem(sys.modules, "torch_xla")  # so find_spec looks at the path, not the loaded module
    return StubInstaller(tmp_path, monkeypatch)


@pytest.fixture
def stub_factory() -> Callable[[Path, str], Path]:
    """``write_stub(root, version)`` for tests that put the stub on a subprocess's PYTHONPATH."""
    return write_stub
