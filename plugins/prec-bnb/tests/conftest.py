"""Shared fixtures. Tests marked ``cuda`` need a real GPU and are skipped cleanly without one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("cuda") is not None and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trainers write logs under the working directory: keep them out of the source tree."""
    monkeypatch.chdir(tmp_path)
