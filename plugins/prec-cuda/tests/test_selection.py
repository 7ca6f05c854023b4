"""Selecting each precision on cuda, its options and its errors. The GPU is simulated (see conftest): these tests
check the selection logic only; nothing runs on a device here."""

from __future__ import annotations

import pytest
import torch

import prec
from prec.precision import Float32Precision, MixedPrecision, TruePrecision


@pytest.fixture
def gpu(simulated_cuda) -> None:
    simulated_cuda(bf16=True)


@pytest.mark.parametrize(
    ("name", "cls", "param_dtype", "compute_dtype"),
    [
        ("16-mixed", MixedPrecision, torch.float32, torch.float16),
        ("bf16-mixed", MixedPrecision, torch.float32, torch.bfloat16),
        ("16-true", TruePrecision, torch.float16, torch.float16),
        ("bf16-true", TruePrecision, torch.bfloat16, torch.bfloat16),
        ("32-true", Float32Precision, torch.float32, torch.float32),
    ],
)
def test_each_precision(gpu, name: str, cls: type, param_dtype: torch.dtype, compute_dtype: torch.dtype) -> None:
    trainer = prec.Trainer(accelerator="gpu", precision=name)
    plugin = trainer.precision_plugin
    assert type(plugin) is cls and plugin.name == name == trainer.precision
    assert plugin.param_dtype == param_dtype and plugin.compute_dtype == compute_dtype
    assert plugin.device_type in ("cuda", None)
    has_scaler = getattr(plugin, "scaler", None) is not None
    assert has_scaler == (name == "16-mixed")


def test_16_mixed_has_a_dynamic_cuda_scaler(gpu) -> None:
    plugin = prec.Trainer(accelerator="gpu", precision="16-mixed").precision_plugin
    assert plugin.scaler.is_enabled() and plugin.scaler._device == "cuda"
    assert plugin.scaler.get_scale() == 2.0**16 and plugin.scaler.get_growth_interval() == 2000
    assert plugin.metrics() == {"loss_scale": 2.0**16, "skipped_steps": 0.0}


def test_legacy_16_means_16_mixed(gpu) -> None:
    with pytest.warns(prec.LegacyPrecisionWarning, match="16-mixed"):
        assert prec.Trainer(accelerator="cuda", precision=16).precision == "16-mixed"


def test_scaler_and_autocast_options_through_the_trainer(gpu) -> None:
    options = {"init_scale": 1024.0, "growth_factor": 4.0, "backoff_factor": 0.25, "growth_interval": 7}
    trainer = prec.Trainer(
        accelerator="gpu", precision="16-mixed", precision_options={**options, "cache_enabled": False}
    )
    plugin = trainer.precision_plugin
    scaler = plugin.scaler
    assert scaler.get_scale() == 1024.0 and scaler.get_growth_factor() == 4.0
    assert scaler.get_backoff_factor() == 0.25 and scaler.get_growth_interval() == 7
    assert plugin.cache_enabled is False
    context = plugin.forward_context()
    assert context.device == "cuda" and context.fast_dtype == torch.float16 and context._cache_enabled is False


def test_a_configured_precision_object(gpu) -> None:
    plugin = prec.get_precision("16-mixed", "gpu", growth_interval=3)
    trainer = prec.Trainer(accelerator="gpu", plugins=[plugin])
    assert trainer.precision_plugin is plugin and plugin.scaler.get_growth_interval() == 3


def test_own_grad_scaler(gpu) -> None:
    scaler = torch.amp.GradScaler("cuda", init_scale=8.0)
    plugin = prec.get_precision("16-mixed", "cuda", scaler=scaler)
    assert plugin.scaler is scaler


def test_a_cpu_precision_object_on_a_gpu_trainer(gpu) -> None:
    plugin = MixedPrecision("16-mixed", "cpu", torch.float16, scaler=True)
    with pytest.raises(prec.ConfigurationError, match="built for device type 'cpu'"):
        prec.Trainer(accelerator="gpu", plugins=[plugin])


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        (
            "16-mixed",
            {"init_scal": 1.0},
            r"unknown option\(s\) 'init_scal'.*accepts: .*cache_enabled.*Did you mean 'init_scale'",
        ),
        ("16-mixed", {"enabled": False}, "unknown option"),
        ("16-mixed", {"scaler": None}, "16-mixed needs a grad scaler"),
        ("16-mixed", {"scaler": False}, "16-mixed needs a grad scaler"),
        ("16-mixed", {"init_scale": 0.0}, r"init_scale=0.0 must be a finite number > 0"),
        ("16-mixed", {"growth_factor": 1.0}, r"growth_factor=1.0 must be a finite number > 1"),
        ("16-mixed", {"backoff_factor": 1.5}, r"backoff_factor=1.5 must be a number in \(0, 1\)"),
        ("16-mixed", {"growth_interval": 0}, r"growth_interval=0 must be an int >= 1"),
        ("16-mixed", {"growth_interval": 2.5}, r"growth_interval=2.5 must be an int >= 1"),
        ("16-mixed", {"scaler": "yes"}, "must be a torch.amp.GradScaler"),
        ("bf16-mixed", {"init_scale": 2.0}, "bf16-mixed has no grad scaler"),
        ("bf16-true", {"cache_enabled": True}, r"accepts: convert_inputs_from, keep_float32, master_weights"),
        ("32-true", {"init_scale": 2.0}, r"accepts: keep_float32, tf32"),
    ],
)
def test_bad_options(gpu, name: str, options: dict, match: str) -> None:
    with pytest.raises(prec.ConfigurationError, match=match):
        prec.Trainer(accelerator="gpu", precision=name, precision_options=options)


def test_a_disabled_or_foreign_scaler(gpu) -> None:
    with pytest.raises(prec.ConfigurationError, match="disabled"):
        prec.get_precision("16-mixed", "cuda", scaler=torch.amp.GradScaler("cuda", enabled=False))
    with pytest.raises(prec.ConfigurationError, match="built for device 'cpu'"):
        prec.get_precision("16-mixed", "cuda", scaler=torch.amp.GradScaler("cpu"))


# -- GPUs without native bfloat16 (simulated: a V100) -----------------------------------------------------------
@pytest.fixture
def volta(simulated_cuda) -> None:
    simulated_cuda(bf16=False, name="Tesla V100-SXM2-16GB (compute capability 7.0)")


@pytest.mark.parametrize(("name", "instead"), [("bf16-mixed", "'16-mixed'"), ("bf16-true", "'16-true'")])
def test_bf16_without_hardware_support_is_an_error(volta, name: str, instead: str) -> None:
    with pytest.raises(prec.UnsupportedPrecisionError, match="V100.*compute capability 7.0") as info:
        prec.Trainer(accelerator="gpu", precision=name)
    assert f"Use precision={instead}" in str(info.value)
    with pytest.raises(prec.UnsupportedPrecisionError):
        prec.get_precision(name, "cuda")


def test_16_mixed_and_auto_on_volta(volta) -> None:
    assert prec.Trainer(accelerator="gpu", precision="16-mixed").precision == "16-mixed"
    assert prec.Trainer(accelerator="gpu", precision="auto").precision == "16-mixed"


def test_64_true_is_not_prec_cuda(gpu) -> None:
    registry = prec.get_registry()
    if ("64-true", "cuda") in registry.precisions:
        assert registry.precisions[("64-true", "cuda")].origin.distribution != "prec-cuda"
    else:
        with pytest.raises(prec.UnsupportedPrecisionError, match="prec-double"):
            prec.Trainer(accelerator="gpu", precision="64-true")


@pytest.mark.parametrize(("name", "dtype"), [("16-true", torch.float16), ("bf16-true", torch.bfloat16)])
def test_true_precisions_build_weights_in_their_dtype_on_the_gpu(gpu, name: str, dtype: torch.dtype) -> None:
    trainer = prec.Trainer(accelerator="gpu", precision=name)
    assert trainer.strategy.module_init_device() == torch.device("cuda", 0)  # init_module builds there
    with trainer.precision_plugin.module_init_context():  # the dtype half of init_module, runnable on CPU
        layer = torch.nn.Linear(2, 2)
    assert layer.weight.dtype == dtype and torch.get_default_dtype() == torch.float32
    converted = trainer.precision_plugin.convert_input((torch.ones(1), torch.ones(1, dtype=torch.int64)))
    assert converted[0].dtype == dtype and converted[1].dtype == torch.int64
