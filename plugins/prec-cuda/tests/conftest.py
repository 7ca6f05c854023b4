"""Shared fixtures. Tests marked ``cuda`` need a real GPU and are skipped cleanly without one.

``simulated_cuda`` pretends a GPU is present, for the selection and error logic only: this machine has none. It
patches the accelerator's probes (availability, device count, bfloat16 support, device name) and lets
``torch.amp.GradScaler("cuda")`` be built; nothing runs on a GPU under it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

import prec
from prec.accelerator import Availability
from prec_cuda import CUDAAccelerator, cuda_probe


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("cuda") is not None:
        count, reason = cuda_probe()
        if count == 0:
            pytest.skip(f"needs a CUDA GPU: {reason}")


SimulateCuda = Callable[..., None]


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trainers write logs under the working directory: keep them out of the source tree."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def simulated_cuda(monkeypatch: pytest.MonkeyPatch) -> Iterator[SimulateCuda]:
    """Call ``simulated_cuda(devices=1, bf16=True, name=...)`` to make ``cuda`` look available (a simulation)."""

    def simulate(devices: int = 1, bf16: bool = True, name: str = "Simulated GPU (compute capability 8.0)") -> None:
        monkeypatch.setattr(CUDAAccelerator, "availability", lambda self: Availability(True))
        monkeypatch.setattr(CUDAAccelerator, "device_count", lambda self: devices)
        monkeypatch.setattr(CUDAAccelerator, "bf16_supported", lambda self: bf16)
        monkeypatch.setattr(CUDAAccelerator, "device_description", lambda self: name)
        # GradScaler("cuda") disables itself when CUDA is missing; under the simulation it must stay enabled.
        monkeypatch.setattr(torch.cuda.amp.common, "amp_definitely_not_available", lambda: False)

    prec.reset_registry()  # fresh accelerator instances, so nothing cached survives from another test
    yield simulate
    prec.reset_registry()
