"""Selecting mxfp8-mixed and int8-mixed: options, the CPU emulation warning, and cuda. No GPU here: the MX check is
a pure function of the compute capability and CUDA version (tested directly), and the cuda selections use the
simulated GPU of conftest for the selection logic only; MXFP8 kernels run in the GPU check (tests marked cuda)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import prec
from prec.testing import train_losses
from prec_torchao import Int8MixedPrecision, MXFP8MixedPrecision, mx_gpu_reason


@pytest.mark.parametrize("capability", [(8, 0), (8, 9), (9, 0)])
def test_mx_needs_compute_capability_10(capability: tuple[int, int]) -> None:
    reason = mx_gpu_reason(capability, "12.8")
    assert reason is not None and "compute capability 10.0 or newer (Blackwell" in reason
    assert f"this GPU has compute capability {capability[0]}.{capability[1]}" in reason


@pytest.mark.parametrize("capability", [(10, 0), (10, 3), (12, 0)])
def test_mx_runs_on_blackwell_with_cuda_12_8(capability: tuple[int, int]) -> None:
    assert mx_gpu_reason(capability, "12.8") is None and mx_gpu_reason(capability, "13.0") is None
    assert "CUDA 12.8+" in (mx_gpu_reason(capability, "12.6") or "")
    assert "CUDA 12.8+" in (mx_gpu_reason(capability, None) or "")


def test_a_gpu_without_mx_is_refused_with_what_to_use(simulated_gpu) -> None:
    simulated_gpu((9, 0), name="NVIDIA H100")
    with pytest.raises(prec.UnsupportedPrecisionError) as caught:
        prec.Trainer(accelerator="cuda", precision="mxfp8-mixed")
    message = str(caught.value)
    assert "NVIDIA H100 (compute capability 9.0)" in message and "compute capability 10.0 or newer" in message
    assert "precision='fp8-mixed'" in message and "'emulate': True" in message


def test_blackwell_gets_real_mxfp8(simulated_gpu, monkeypatch: pytest.MonkeyPatch) -> None:
    simulated_gpu((10, 0), name="NVIDIA B200")
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    plugin = prec.Trainer(accelerator="gpu", precision="mxfp8-mixed").precision_plugin
    assert type(plugin) is MXFP8MixedPrecision and plugin.device_type == "cuda" and plugin.emulated is False
    assert plugin.converter.config.kernel_preference.name == "AUTO" and plugin.converter.config.wgrad_with_hp is False


def test_emulation_on_a_gpu_without_mx_is_explicit(simulated_gpu) -> None:
    simulated_gpu((9, 0))
    plugin = prec.get_precision("mxfp8-mixed", "cuda", emulate=True, recipe="rceil_wgrad_with_hp")
    assert plugin.emulated is True and plugin.converter.config.kernel_preference.name == "EMULATED"
    assert plugin.converter.config.wgrad_with_hp is True


@pytest.mark.parametrize("capability", [(8, 0), (9, 0)])
def test_int8_on_gpus_with_bfloat16(simulated_gpu, capability: tuple[int, int]) -> None:
    simulated_gpu(capability)
    plugin = prec.Trainer(accelerator="cuda", precision="int8-mixed").precision_plugin
    assert type(plugin) is Int8MixedPrecision and plugin.emulated is False and plugin.device_type == "cuda"


@pytest.mark.parametrize("name", ["int8-mixed", "mxfp8-mixed"])
def test_gpus_without_bfloat16_are_told_to_use_16_mixed(simulated_gpu, name: str) -> None:
    simulated_gpu((7, 5))
    with pytest.raises(prec.UnsupportedPrecisionError, match="precision='16-mixed'"):
        prec.get_precision(name, "cuda", **({"emulate": True} if name == "mxfp8-mixed" else {}))


def test_cpu_without_the_emulate_option_warns_that_it_is_an_emulation() -> None:
    with pytest.warns(prec.PerformanceWarning, match="emulates MXFP8 matmuls"):
        prec.Trainer(accelerator="cpu", precision="mxfp8-mixed")


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("mxfp8-mixed", {"recipe": "floor"}, "recipe='floor' must be one of 'rceil', 'rceil_wgrad_with_hp'"),
        ("mxfp8-mixed", {"emulate": False}, "emulate=False needs MXFP8 kernels, which only run on a CUDA GPU"),
        ("mxfp8-mixed", {"emulate": True, "module_filter": lambda m, n: True, "skip": ["x"]}, "module_filter replaces"),
        ("int8-mixed", {"emulate": True}, "unknown option"),
        ("int8-mixed", {"skip": "head"}, "skip='head' must be a list of module-name patterns"),
    ],
)
def test_bad_options_are_configuration_errors(name: str, options: dict[str, Any], match: str) -> None:
    with pytest.raises(prec.ConfigurationError, match=match):
        prec.Trainer(accelerator="cpu", precision=name, precision_options=options)


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["int8-mixed", "mxfp8-mixed"])
def test_real_training_on_a_gpu(name: str) -> None:
    reason = mx_gpu_reason(torch.cuda.get_device_capability(), torch.version.cuda)
    if name == "mxfp8-mixed" and reason is not None:
        pytest.skip(reason)
    precision = prec.get_precision(name, "cuda")
    assert precision.emulated is False
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 256))
        model.append(torch.nn.Linear(256, 16))
    precision.convert_module(model)
    assert precision.conversion.converted == ["0", "2"]
    x = torch.randn(96, 256, device="cuda")
    y = torch.randint(0, 16, (96,), device="cuda")
    losses = train_losses(precision, model, x, y)
    assert losses[-1] < 0.5 * losses[0]
