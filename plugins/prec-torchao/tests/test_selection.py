"""Selecting the fp8 precisions on cuda. The GPU is simulated (see conftest): these tests check the selection
logic only; nothing runs on a device here. The fp8 kernels themselves run in the GPU check (tests marked cuda)."""

from __future__ import annotations

import pytest
import torch

import prec
from prec.testing import train_losses
from prec_torchao import Float8MixedPrecision, Float8TruePrecision


@pytest.mark.parametrize("capability", [(8, 9), (9, 0), (10, 0)])
@pytest.mark.parametrize(("name", "cls"), [("fp8-mixed", Float8MixedPrecision), ("fp8-bf16-true", Float8TruePrecision)])
def test_fp8_gpus_get_real_fp8(simulated_gpu, capability: tuple[int, int], name: str, cls: type) -> None:
    simulated_gpu(capability)
    plugin = prec.Trainer(accelerator="gpu", precision=name).precision_plugin
    assert type(plugin) is cls and plugin.device_type == "cuda" and plugin.compute_dtype == torch.bfloat16
    assert plugin.converter.emulate is False and plugin.converter.config.emulate is False
    assert plugin.emulated is False  # real fp8 kernels: prec bench shows it as native


@pytest.mark.parametrize("capability", [(7, 0), (8, 0), (8, 6)])
def test_older_gpus_are_told_which_can_and_what_to_use(simulated_gpu, capability: tuple[int, int]) -> None:
    simulated_gpu(capability, name="NVIDIA A100")
    with pytest.raises(prec.UnsupportedPrecisionError) as caught:
        prec.Trainer(accelerator="cuda", precision="fp8-mixed")
    message = str(caught.value)
    assert f"NVIDIA A100 (compute capability {capability[0]}.{capability[1]})" in message
    assert "8.9 or newer" in message and "H100" in message and "precision='bf16-mixed'" in message


def test_emulation_on_an_older_gpu_is_explicit(simulated_gpu) -> None:
    simulated_gpu((8, 0))
    plugin = prec.get_precision("fp8-bf16-true", "cuda", emulate=True)
    assert plugin.converter.config.emulate is True
    assert plugin.emulated is True  # the Precision contract says so, for prec bench's "native" column


def test_emulation_needs_bfloat16_on_the_gpu(simulated_gpu) -> None:
    simulated_gpu((7, 5))
    with pytest.raises(prec.UnsupportedPrecisionError, match="precision='16-mixed'"):
        prec.get_precision("fp8-mixed", "cuda", emulate=True)


def test_gpu_options(simulated_gpu) -> None:
    simulated_gpu((9, 0))
    plugin = prec.get_precision("fp8-mixed", "cuda", recipe="rowwise", cache_enabled=False)
    assert plugin.converter.recipe == "rowwise" and plugin.cache_enabled is False
    plugin = prec.get_precision("fp8-mixed", "cuda", fsdp_float8_all_gather=True)
    assert plugin.converter.config.enable_fsdp_float8_all_gather is True


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["fp8-mixed", "fp8-bf16-true"])
def test_conformance_on_a_real_gpu(name: str) -> None:
    from prec.testing import check_precision

    with pytest.warns(prec.PerformanceWarning):
        check_precision(name, "cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["fp8-mixed", "fp8-bf16-true"])
def test_real_fp8_training_on_a_gpu(name: str) -> None:
    from torchao.float8.float8_linear import Float8Linear

    precision = prec.get_precision(name, "cuda")
    torch.manual_seed(0)
    with torch.device("cuda"), precision.module_init_context():
        model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 256))
        model.append(torch.nn.Linear(256, 16))
    precision.convert_module(model)
    assert [type(layer) for layer in model][:3:2] == [Float8Linear, Float8Linear]
    x = torch.randn(64, 256, device="cuda")
    y = torch.randint(0, 16, (64,), device="cuda")
    losses = train_losses(precision, model, x, y)
    assert losses[-1] < 0.5 * losses[0]
