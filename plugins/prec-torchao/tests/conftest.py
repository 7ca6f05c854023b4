"""Shared fixtures. Tests marked ``cuda`` need a real GPU with fp8 tensor cores and are skipped cleanly without.

``simulated_gpu`` pretends a GPU of a given compute capability is present, for the selection logic only (this
machine has none): it patches prec-cuda's probes and :func:`prec_torchao.precisions.cuda_capability`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

import prec
from prec.accelerator import Availability


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("cuda") is not None:
        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA GPU")
        if torch.cuda.get_device_capability() < (8, 9):
            pytest.skip("needs a GPU with fp8 tensor cores (compute capability 8.9+)")


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trainers write logs under the working directory: keep them out of the source tree."""
    monkeypatch.chdir(tmp_path)


SimulateGpu = Callable[..., None]


@pytest.fixture
def simulated_gpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[SimulateGpu]:
    """Call ``simulated_gpu(capability=(9, 0))`` to make ``cuda`` look available with that GPU (a simulation)."""
    import prec_torchao.precisions
    from prec_cuda import CUDAAccelerator

    def simulate(capability: tuple[int, int] = (9, 0), name: str = "Simulated GPU") -> None:
        bf16 = capability >= (8, 0)
        description = f"{name} (compute capability {capability[0]}.{capability[1]})"
        monkeypatch.setattr(CUDAAccelerator, "availability", lambda self: Availability(True))
        monkeypatch.setattr(CUDAAccelerator, "device_count", lambda self: 1)
        monkeypatch.setattr(CUDAAccelerator, "bf16_supported", lambda self: bf16)
        monkeypatch.setattr(CUDAAccelerator, "device_description", lambda self: description)
        monkeypatch.setattr(prec_torchao.precisions, "cuda_capability", lambda: capability)

    prec.reset_registry()
    yield simulate
    prec.reset_registry()
