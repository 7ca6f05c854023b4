from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import prec


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trainers write logs under the working directory by default; keep them out of the source tree."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _restore_torch_globals() -> Iterator[None]:
    """Every test starts and ends with float32 as the default dtype and a fresh plugin registry."""
    dtype = torch.get_default_dtype()
    yield
    assert torch.get_default_dtype() == dtype, "a test leaked a default-dtype change"
    torch.set_default_dtype(dtype)


@pytest.fixture
def fresh_registry() -> Iterator[None]:
    prec.reset_registry()
    yield
    prec.reset_registry()
