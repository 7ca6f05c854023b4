"""Registration, availability and configuration errors of the xla accelerator; none of it needs torch_xla."""

from __future__ import annotations

import sys
from typing import Any

import pytest
import torch

import prec
from prec.errors import AcceleratorUnavailableError, ConfigurationError, UnsupportedPrecisionError
from prec_xla import detect

SUPPORTED = ["16-true", "32-true", "bf16-mixed", "bf16-true"]


@pytest.fixture
def no_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PJRT_DEVICE", raising=False)
    if detect.tpu_chips():
        pytest.skip("this machine has a TPU attached, so xla is available without PJRT_DEVICE")


def test_registers_accelerator_alias_precisions_and_strategy() -> None:
    registry = prec.get_registry()
    assert registry.canonical_accelerator("tpu") == "xla"
    assert registry.accelerators["xla"].cls.device_type == "xla"
    assert registry.supported_precisions("tpu") == SUPPORTED
    assert registry.accelerators["xla"].origin.distribution == "prec-xla"
    strategy = registry.strategies["single_xla"]
    assert strategy.accelerators == frozenset({"xla"})


@pytest.mark.parametrize(
    ("name", "reason"),
    [("16-mixed", "TPUs compute in bfloat16, not float16"), ("64-true", "TPUs have no float64 arithmetic")],
)
def test_support_table_gaps_are_explained(name: str, reason: str) -> None:
    with pytest.raises(UnsupportedPrecisionError, match=reason):
        prec.get_registry().precision_entry(name, "tpu")


@pytest.mark.parametrize(
    ("torch_version", "xla_version", "problem"),
    [
        ("2.9.0+cu128", "2.9.0", None),
        ("2.9.1", "2.9.0", None),
        ("2.13.0+cpu", "2.9.0", "torch_xla 2.9.0 is built for torch 2.9.x but torch 2.13.0+cpu is installed"),
        ("2.13.0", "2.9.0", "`pip install torch==2.9.0 torch_xla==2.9.0`"),
        ("2.9.0", None, "has no installed metadata"),
    ],
)
def test_version_problem(torch_version: str, xla_version: str | None, problem: str | None) -> None:
    found = detect.version_problem(torch_version, xla_version)
    assert found == problem if problem is None else problem in (found or "")


def test_trainer_without_a_backend_says_how_to_install(no_backend: None) -> None:
    with pytest.raises(ConfigurationError, match=r"pip install prec-xla torch==\S+ torch_xla==") as caught:
        prec.Trainer(accelerator="tpu")
    assert isinstance(caught.value, AcceleratorUnavailableError)


def test_missing_torch_xla_is_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    if "torch_xla" in sys.modules or detect.installed_version("torch_xla"):
        pytest.skip("torch_xla is installed in this environment")
    monkeypatch.setenv("PJRT_DEVICE", "CPU")
    availability = prec.get_registry().accelerator("xla").availability()
    assert not availability
    assert availability.reason.startswith("torch_xla is not installed (`pip install torch==")


def test_mismatched_torch_xla_is_reported_not_imported(stub_torch_xla: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PJRT_DEVICE", "CPU")
    stale = stub_torch_xla.mismatched()
    stub_torch_xla(stale)
    availability = detect.probe()
    assert not availability
    assert f"torch_xla {stale} is built for torch" in availability.reason
    assert f"`pip install torch=={stale} torch_xla=={stale}`" in availability.reason
    with pytest.raises(AcceleratorUnavailableError, match=f"torch_xla {stale} is built for torch"):
        prec.Trainer(accelerator="tpu")


@pytest.mark.parametrize(
    ("pjrt", "available", "reason"),
    [
        ("CPU", True, "XLA on the host CPU (PJRT_DEVICE=CPU)"),
        ("cpu", True, "XLA on the host CPU (PJRT_DEVICE=CPU)"),
        ("CUDA", False, "PJRT_DEVICE=CUDA is not a backend prec-xla runs on (CPU, TPU)"),
        ("TPU", True, "TPU (PJRT_DEVICE=TPU"),
    ],
)
def test_pjrt_device_decides_the_backend(
    stub_torch_xla: Any, monkeypatch: pytest.MonkeyPatch, pjrt: str, available: bool, reason: str
) -> None:
    stub_torch_xla(stub_torch_xla.matching())
    monkeypatch.setenv("PJRT_DEVICE", pjrt)
    availability = detect.probe()
    assert bool(availability) is available
    assert availability.reason.startswith(reason)


def test_no_backend_is_unavailable_with_the_way_to_use_the_cpu(stub_torch_xla: Any, no_backend: None) -> None:
    stub_torch_xla(stub_torch_xla.matching())
    availability = detect.probe()
    assert not availability
    assert "PJRT_DEVICE=CPU runs XLA on the CPU" in availability.reason
    assert prec.get_registry().accelerator("xla").device_count() == 0


def test_cpu_device_count_follows_cpu_num_devices(stub_torch_xla: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    stub_torch_xla(stub_torch_xla.matching())
    monkeypatch.setenv("PJRT_DEVICE", "CPU")
    accelerator = prec.get_registry().accelerator("xla")
    assert accelerator.device_count() == 1
    monkeypatch.setenv("CPU_NUM_DEVICES", "4")
    assert accelerator.device_count() == 4
    assert accelerator.auto_precision()[0] == "32-true"


def test_a_torch_xla_that_fails_to_import_is_a_configuration_error(
    stub_torch_xla: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub_torch_xla(stub_torch_xla.matching())
    monkeypatch.setenv("PJRT_DEVICE", "CPU")
    with pytest.raises(AcceleratorUnavailableError, match="torch_xla failed to import .*stub torch_xla imported"):
        prec.Trainer(accelerator="tpu")


@pytest.mark.parametrize("options", [{"scaler": True}, {"init_scale": 2.0**16}])
def test_bf16_mixed_has_no_scaler_to_configure(options: dict[str, object]) -> None:
    from prec_xla.precision import bf16_mixed

    with pytest.raises(ConfigurationError, match="no grad scaler to configure"):
        bf16_mixed(prec.get_registry().accelerator("xla"), **options)


def test_precisions_build_without_torch_xla() -> None:
    """Building a precision object must not need the device (the Trainer builds it before choosing the strategy)."""
    from prec_xla.precision import bf16_mixed, bf16_true, full, half_true

    accelerator = prec.get_registry().accelerator("xla")
    built = [factory(accelerator) for factory in (full, bf16_mixed, bf16_true, half_true)]
    assert [p.name for p in built] == ["32-true", "bf16-mixed", "bf16-true", "16-true"]
    assert all(p.device_type == "xla" for p in built)
    assert built[1].compute_dtype == torch.bfloat16 and built[1].param_dtype == torch.float32
    assert built[1].scaler is None
    assert built[2].param_dtype == torch.bfloat16 and built[3].param_dtype == torch.float16
