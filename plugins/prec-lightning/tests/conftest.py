"""Shared fixtures: a clean working directory and default dtype, quiet Lightning, a third party's 16-mixed."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import prec


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("cuda") is not None and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both Trainers write logs and checkpoints under the working directory: keep them out of the source tree."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _default_dtype_is_restored() -> Iterator[None]:
    """The true precisions change torch's default dtype only inside their contexts."""
    before = torch.get_default_dtype()
    yield
    after = torch.get_default_dtype()
    torch.set_default_dtype(before)
    assert after == before, f"the default dtype leaked out of the test: {after} (was {before})"


@pytest.fixture
def quiet() -> Iterator[None]:
    """Lightning's advice about dataloader workers is noise here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
        yield


def half_mixed_cpu(accelerator: prec.Accelerator, **options: Any) -> prec.Precision:
    """A third party's 16-mixed on the CPU: float16 autocast with a grad scaler (prec-cpu leaves it out)."""
    return prec.MixedPrecision("16-mixed", "cpu", torch.float16, scaler=True, **options)


@pytest.fixture
def third_party_16_mixed() -> Iterator[None]:
    """Register ``16-mixed`` on the CPU in code, as a third-party plugin would, for one test."""

    class ThirdParty:
        @prec.hookimpl
        def prec_register_precisions(self, register: Callable[..., None]) -> None:
            register("16-mixed", "cpu", half_mixed_cpu, priority=100)

    name = prec.register_plugin(ThirdParty(), name="cpu16-in-process")
    yield
    prec.unregister_plugin(name)
    prec.reset_registry()
