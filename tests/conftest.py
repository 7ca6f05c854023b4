"""Shared set-up of the cross-package tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trainers write logs and checkpoints under the working directory: keep them out of the source tree."""
    monkeypatch.chdir(tmp_path)
