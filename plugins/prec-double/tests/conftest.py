"""Shared fixtures for prec-double's tests.

No test here needs a GPU. Accelerators this machine cannot have (Apple MPS, a TPU) are simulated by registering a
throwaway accelerator class in code, exactly as a third-party plugin would; nothing ever runs on them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

import prec
from prec.accelerator import Availability


@pytest.fixture(autouse=True)
def run_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trainers write their logs under the working directory: keep them out of the source tree."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def default_dtype_is_restored() -> Iterator[None]:
    """Every test must leave torch's default dtype as it found it: 64-true changes it only inside its contexts."""
    before = torch.get_default_dtype()
    yield
    after = torch.get_default_dtype()
    torch.set_default_dtype(before)
    assert after == before, f"the default dtype leaked out of the test: {after} (was {before})"


def fake_accelerator(name: str, device_type: str) -> type[prec.Accelerator]:
    """An accelerator class that claims to be available: simulates hardware this machine does not have."""

    class Simulated(prec.Accelerator):
        def availability(self) -> Availability:
            return Availability(True)

        def device_count(self) -> int:
            return 1

    Simulated.name = name
    Simulated.device_type = device_type
    Simulated.__name__ = Simulated.__qualname__ = f"Simulated{name.title()}Accelerator"
    return Simulated


class ThirdPartyPlugin:
    """A plugin object with hook implementations, registered in code with :func:`prec.register_plugin`."""

    def __init__(self, accelerators: list[type[prec.Accelerator]], precisions: list[tuple[str, str, Callable]]) -> None:
        self.accelerators = accelerators
        self.precisions = precisions

    @prec.hookimpl
    def prec_register_accelerators(self, register: Callable[..., None]) -> None:
        for accelerator in self.accelerators:
            register(accelerator, priority=100)  # wins over an installed plugin of the same name, no conflict

    @prec.hookimpl
    def prec_register_precisions(self, register: Callable[..., None]) -> None:
        for name, accelerator, factory in self.precisions:
            register(name, accelerator, factory, priority=100)


RegisterThirdParty = Callable[..., None]


@pytest.fixture
def third_party() -> Iterator[RegisterThirdParty]:
    """Register a third-party plugin for one test; it is removed and the registry rebuilt afterwards."""
    names: list[str] = []

    def register(
        accelerators: list[tuple[str, str]] | None = None,
        precisions: list[tuple[str, str, Callable]] | None = None,
    ) -> None:
        """``accelerators``: (name, device_type) pairs to simulate; ``precisions``: (name, accelerator, factory)."""
        classes = [fake_accelerator(name, device_type) for name, device_type in accelerators or []]
        names.append(prec.register_plugin(ThirdPartyPlugin(classes, precisions or [])))

    yield register
    for name in names:
        prec.unregister_plugin(name)
    prec.reset_registry()
