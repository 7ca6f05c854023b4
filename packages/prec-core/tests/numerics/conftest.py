from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """The models here are tiny: one thread computes them fastest and keeps a busy machine's other threads out."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def _optimizers_imported() -> None:
    """The first optimizer a process builds imports torch._dynamo (seconds); pay it once here, not in a test."""
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
