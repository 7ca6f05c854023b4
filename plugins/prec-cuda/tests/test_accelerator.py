"""The cuda accelerator: registration, availability probes (simulated where this machine has no GPU), auto choice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

import prec
from prec.accelerator import Availability
from prec_cuda import CUDAAccelerator, cuda_probe
from prec_cuda.precisions import CUDA_PRECISIONS

CUDA_NAMES = {"16-mixed", "bf16-mixed", "16-true", "bf16-true", "32-true"}
no_cuda_build = pytest.mark.skipif(torch.backends.cuda.is_built(), reason="checks a torch build without CUDA")


def test_registered_through_the_entry_point() -> None:
    registry = prec.get_registry()
    assert registry.plugins["cuda"].status == "ok"
    assert registry.plugins["cuda"].distribution == "prec-cuda"
    assert registry.accelerators["cuda"].cls is CUDAAccelerator
    ours = {name for (name, acc), entry in registry.precisions.items() if entry.origin.distribution == "prec-cuda"}
    assert ours == CUDA_NAMES
    assert CUDA_NAMES <= set(registry.supported_precisions("gpu"))  # the alias resolves
    assert {name for name, _, _ in CUDA_PRECISIONS} == CUDA_NAMES


def test_registering_creates_no_cuda_context() -> None:
    prec.reset_registry()
    registry = prec.get_registry()
    registry.accelerator("cuda").availability()
    registry.accelerator("gpu").device_count()
    assert not torch.cuda.is_initialized()


@no_cuda_build
def test_unavailable_here_with_the_reason() -> None:
    count, reason = cuda_probe()
    assert count == 0
    assert "no CUDA support" in reason and torch.__version__ in reason
    availability = CUDAAccelerator().availability()
    assert not availability and availability.reason == reason


@no_cuda_build
def test_trainer_on_gpu_explains_why_not() -> None:
    with pytest.raises(prec.AcceleratorUnavailableError, match="no CUDA support.*CUDA build of torch"):
        prec.Trainer(accelerator="gpu", precision="16-mixed")


@no_cuda_build
def test_auto_picks_cpu_without_a_gpu() -> None:
    assert prec.Trainer(accelerator="auto").accelerator.name == "cpu"


@no_cuda_build
def test_prec_list_shows_cuda_unavailable_with_its_precisions() -> None:
    """The real console script in a fresh process: cuda listed with 5 precisions, unavailable, with a reason."""
    prec_exe = os.path.join(os.path.dirname(sys.executable), "prec")
    out = subprocess.run([prec_exe, "list", "--json"], capture_output=True, text=True, timeout=120, check=True)
    data = json.loads(out.stdout)
    cuda = next(acc for acc in data["accelerators"] if acc["name"] == "cuda")
    assert cuda["aliases"] == ["gpu"] and cuda["available"] is False and cuda["devices"] == 0
    assert "no CUDA support" in cuda["reason"] and cuda["distribution"] == "prec-cuda"
    ours = {p["name"] for p in data["precisions"] if p["accelerator"] == "cuda" and p["distribution"] == "prec-cuda"}
    assert ours == CUDA_NAMES


# -- the probe's reasons, with torch's CUDA functions simulated (this build has no CUDA) ------------------------
@pytest.fixture
def cuda_build(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return monkeypatch


def test_probe_counts_devices(cuda_build: pytest.MonkeyPatch) -> None:
    cuda_build.setattr(torch.cuda, "device_count", lambda: 4)
    assert cuda_probe() == (4, "")
    assert CUDAAccelerator().availability() == Availability(True)
    assert CUDAAccelerator().device_count() == 4


def test_probe_reports_hidden_devices(cuda_build: pytest.MonkeyPatch) -> None:
    cuda_build.setattr(torch.cuda, "device_count", lambda: 0)
    cuda_build.setenv("CUDA_VISIBLE_DEVICES", "")
    assert cuda_probe() == (0, "CUDA_VISIBLE_DEVICES='' hides every GPU")


def test_probe_reports_the_driver_warning(cuda_build: pytest.MonkeyPatch) -> None:
    def driver_too_old() -> int:
        warnings.warn("CUDA initialization: The NVIDIA driver on your system is too old", UserWarning, stacklevel=1)
        return 0

    cuda_build.setattr(torch.cuda, "device_count", driver_too_old)
    count, reason = cuda_probe()
    assert count == 0 and "driver error" in reason and "too old" in reason


def test_probe_reports_a_driver_exception(cuda_build: pytest.MonkeyPatch) -> None:
    def broken() -> int:
        raise RuntimeError("nvml: driver/library version mismatch")

    cuda_build.setattr(torch.cuda, "device_count", broken)
    assert cuda_probe() == (0, "the CUDA driver failed: RuntimeError: nvml: driver/library version mismatch")


def test_probe_without_devices(cuda_build: pytest.MonkeyPatch) -> None:
    cuda_build.setattr(torch.cuda, "device_count", lambda: 0)
    assert cuda_probe() == (0, "no CUDA device found (torch.cuda.device_count() is 0)")


# -- auto selection and devices, with the GPU simulated -------------------------------------------------------
def test_auto_accelerator_prefers_cuda(simulated_cuda) -> None:
    simulated_cuda()
    assert CUDAAccelerator.auto_priority > prec.get_registry().accelerators["cpu"].cls.auto_priority
    trainer = prec.Trainer(accelerator="auto")
    assert trainer.accelerator.name == "cuda" and trainer.strategy.root_device == torch.device("cuda", 0)


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16-mixed"), (False, "16-mixed")])
def test_auto_precision(simulated_cuda, bf16: bool, expected: str) -> None:
    simulated_cuda(bf16=bf16)
    trainer = prec.Trainer(accelerator="gpu", precision="auto")
    assert trainer.precision == expected
    assert trainer.auto_precision_reason and "bfloat16" in trainer.auto_precision_reason


def test_devices(simulated_cuda) -> None:
    simulated_cuda(devices=2)
    accelerator = prec.get_registry().accelerator("gpu")
    assert accelerator.parse_devices(-1) == [0, 1]
    assert accelerator.parse_devices("1") == [0]
    with pytest.raises(prec.ConfigurationError, match="has 2"):
        accelerator.parse_devices([2])


def test_supports_dtype(simulated_cuda) -> None:
    simulated_cuda(bf16=False)
    accelerator = prec.get_registry().accelerator("cuda")
    assert accelerator.supports_dtype(torch.float16) and not accelerator.supports_dtype(torch.bfloat16)
