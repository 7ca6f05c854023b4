"""prec-cpu: the accelerator, its precisions, and the bf16 performance warning."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch

import prec
import prec_cpu


@pytest.fixture
def bf16_hardware(request: pytest.FixtureRequest) -> Iterator[None]:
    """Simulate a CPU with or without native bf16 (this machine has one or the other, never both)."""
    native = request.param
    original = prec_cpu.native_bf16
    prec_cpu.native_bf16 = lambda: native  # type: ignore[assignment]
    yield
    prec_cpu.native_bf16 = original


def test_registered_through_its_entry_point() -> None:
    registry = prec.get_registry()
    assert registry.accelerators["cpu"].origin.distribution == "prec-cpu"
    for name in ("32-true", "bf16-mixed", "bf16-true", "16-true"):
        assert registry.precision_entry(name, "cpu").origin.distribution == "prec-cpu"
    assert ("16-mixed", "cpu") not in registry.precisions  # the support table: 16-mixed is GPU only


def test_cpu_accelerator() -> None:
    accelerator = prec.get_registry().accelerator("cpu")
    assert isinstance(accelerator, prec_cpu.CPUAccelerator)
    assert accelerator.availability().available and accelerator.availability().reason == ""
    assert accelerator.device_count() >= 1
    assert accelerator.get_device() == torch.device("cpu")
    assert accelerator.parse_devices("auto") == [0] and accelerator.parse_devices(1) == [0]


def test_native_bf16_matches_the_cpu_flags() -> None:
    prec_cpu.native_bf16.cache_clear()
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        text = cpuinfo.read()
    expected = any(flag in text.split() for flag in ("avx512_bf16", "amx_bf16", "bf16"))
    assert prec_cpu.native_bf16() is expected


@pytest.mark.parametrize("bf16_hardware", [False], indirect=True)
@pytest.mark.parametrize("name", ["bf16-mixed", "bf16-true"])
def test_bf16_without_native_support_warns_but_works(bf16_hardware: None, name: str) -> None:
    with pytest.warns(prec.PerformanceWarning, match="slower than 32-true") as record:
        trainer = prec.Trainer(accelerator="cpu", precision=name)
    assert record[0].filename == __file__  # points at the user's line
    assert trainer.precision == name


@pytest.mark.parametrize("bf16_hardware", [True], indirect=True)
@pytest.mark.parametrize("name", ["bf16-mixed", "bf16-true", "16-true", "32-true"])
def test_no_warning_with_native_bf16(bf16_hardware: None, name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prec.Trainer(accelerator="cpu", precision=name)


@pytest.mark.parametrize(
    ("bf16_hardware", "expected"), [(True, "bf16-mixed"), (False, "32-true")], indirect=["bf16_hardware"]
)
def test_auto_precision_on_cpu(bf16_hardware: None, expected: str) -> None:
    trainer = prec.Trainer(accelerator="cpu", precision="auto")
    assert trainer.precision == expected and trainer.auto_precision_reason
