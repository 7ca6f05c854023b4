"""Selecting a precision is a registry lookup; failures explain what is supported and what to install."""

from __future__ import annotations

import pytest
import torch

import prec
from prec.accelerator import Accelerator, Availability

# Whether bf16 is native depends on the CPU; prec-cpu's own tests cover that warning.
pytestmark = pytest.mark.filterwarnings("ignore::prec.errors.PerformanceWarning")


def test_cpu_precisions_resolve_through_the_registry() -> None:
    registry = prec.get_registry()
    assert set(registry.supported_precisions("cpu")) >= {"32-true", "bf16-mixed", "bf16-true", "16-true"}
    entry = registry.precision_entry("bf16-mixed", "cpu")
    assert entry.origin.distribution == "prec-cpu"


@pytest.mark.parametrize(
    ("precision", "expected_class", "param_dtype"),
    [
        ("32-true", prec.precision.Float32Precision, torch.float32),
        (32, prec.precision.Float32Precision, torch.float32),
        (None, prec.precision.Float32Precision, torch.float32),
        ("bf16-true", prec.TruePrecision, torch.bfloat16),
        ("16-true", prec.TruePrecision, torch.float16),
    ],
)
def test_get_precision_for_own_loops(precision: object, expected_class: type, param_dtype: torch.dtype) -> None:
    plugin = prec.get_precision(precision, accelerator="cpu")  # type: ignore[arg-type]
    assert type(plugin) is expected_class
    assert plugin.param_dtype == param_dtype


def test_bf16_mixed_on_cpu_is_autocast_without_a_scaler() -> None:
    plugin = prec.get_precision("bf16-mixed", "cpu")
    assert isinstance(plugin, prec.MixedPrecision)
    assert plugin.scaler is None and plugin.name == "bf16-mixed" and plugin.device_type == "cpu"


def test_16_mixed_on_cpu_is_an_error_that_suggests_bf16_mixed() -> None:
    with pytest.raises(prec.UnsupportedPrecisionError) as excinfo:
        prec.get_precision("16-mixed", "cpu")
    message = str(excinfo.value)
    assert "bf16-mixed" in message and "needs a GPU" in message
    supported = message.split("Supported on cpu: ")[1]
    assert all(name in supported for name in ("16-true", "32-true", "bf16-mixed", "bf16-true"))
    assert "16-mixed" not in supported.replace("bf16-mixed", "")


def test_legacy_16_reaches_the_same_error_after_warning() -> None:
    with pytest.warns(prec.LegacyPrecisionWarning), pytest.raises(prec.UnsupportedPrecisionError):
        prec.Trainer(accelerator="cpu", precision=16)


def test_missing_pair_names_the_package_that_adds_it(monkeypatch: pytest.MonkeyPatch, fresh_registry: None) -> None:
    import prec_cpu

    # Only prec-cpu, registered in code: as if prec-double were not installed.
    monkeypatch.setenv("PREC_DISABLE_PLUGIN_AUTOLOAD", "1")
    name = prec.register_plugin(prec_cpu, name="cpu-only")
    try:
        with pytest.raises(prec.UnsupportedPrecisionError, match="pip install prec-double"):
            prec.Trainer(accelerator="cpu", precision="64-true")
    finally:
        prec.unregister_plugin(name)


def test_disabled_provider_is_named(monkeypatch: pytest.MonkeyPatch, fresh_registry: None) -> None:
    monkeypatch.setenv("PREC_DISABLED_PLUGINS", "prec-double")
    prec.reset_registry()
    with pytest.raises(prec.UnsupportedPrecisionError, match="prec-double.*PREC_DISABLED_PLUGINS"):
        prec.Trainer(accelerator="cpu", precision="64-true")


def test_missing_accelerator_names_the_package_that_adds_it() -> None:
    registry = prec.get_registry()
    for name, package in [("xla", "prec-xla"), ("tpu", "prec-xla"), ("cuda", "prec-cuda"), ("gpu", "prec-cuda")]:
        if registry.canonical_accelerator(name) in registry.accelerators:
            continue
        with pytest.raises(prec.UnknownAcceleratorError, match=f"pip install {package}"):
            prec.Trainer(accelerator=name)


def test_unknown_accelerator_suggests_a_close_name() -> None:
    with pytest.raises(prec.UnknownAcceleratorError, match="Did you mean 'cpu'"):
        prec.Trainer(accelerator="cpus")


def test_unknown_precision_through_the_trainer() -> None:
    with pytest.raises(prec.UnknownPrecisionError, match="Did you mean 'bf16-true'"):
        prec.Trainer(accelerator="cpu", precision="bf16-tru")


class _NoDevice(Accelerator):
    name = "nodevice"
    device_type = "cpu"
    install_hint = "Plug in a nodevice."

    def availability(self) -> Availability:
        return Availability(False, "no nodevice is attached")

    def device_count(self) -> int:
        return 0


class _NoDevicePlugin:
    @prec.hookimpl
    def prec_register_accelerators(self, register):  # noqa: ANN001
        register(_NoDevice)

    @prec.hookimpl
    def prec_register_precisions(self, register):  # noqa: ANN001
        register("32-true", "nodevice", lambda accelerator: prec.Precision())


@pytest.fixture
def nodevice() -> object:
    name = prec.register_plugin(_NoDevicePlugin(), name="nodevice-plugin")
    yield name
    prec.unregister_plugin(name)


def test_unavailable_accelerator_says_why_and_how(nodevice: str) -> None:
    with pytest.raises(prec.AcceleratorUnavailableError, match="no nodevice is attached.*Plug in a nodevice"):
        prec.Trainer(accelerator="nodevice")


def test_auto_skips_unavailable_accelerators(nodevice: str) -> None:
    assert prec.Trainer(accelerator="auto").accelerator.name == "cpu"


def test_precision_instance_is_used_as_is() -> None:
    plugin = prec.TruePrecision("bf16-true", torch.bfloat16)
    trainer = prec.Trainer(accelerator="cpu", plugins=[plugin])
    assert trainer.precision_plugin is plugin and trainer.precision == "bf16-true"


def test_precision_instance_and_string_together_is_an_error() -> None:
    with pytest.raises(prec.ConfigurationError, match="both choose the precision"):
        prec.Trainer(accelerator="cpu", precision="32-true", plugins=[prec.Precision()])


def test_precision_instance_for_another_device_is_an_error() -> None:
    plugin = prec.MixedPrecision("16-mixed", "cuda", torch.float16)
    with pytest.raises(prec.ConfigurationError, match="device type 'cuda'"):
        prec.Trainer(accelerator="cpu", plugins=plugin)


def test_two_precision_instances_is_an_error() -> None:
    with pytest.raises(prec.ConfigurationError, match="pass one"):
        prec.Trainer(accelerator="cpu", plugins=[prec.Precision(), prec.Precision()])


def test_non_precision_plugin_is_an_error() -> None:
    with pytest.raises(prec.ConfigurationError, match="takes prec.Precision instances"):
        prec.Trainer(accelerator="cpu", plugins=["bf16-mixed"])


def test_precision_options_reach_the_factory() -> None:
    with pytest.raises(prec.ConfigurationError, match="unknown option.*'not_an_option'.*accepts: keep_float32, tf32"):
        prec.Trainer(accelerator="cpu", precision="32-true", precision_options={"not_an_option": 1})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"devices": 0},
        {"devices": 10_000},
        {"devices": "a,b"},
        {"devices": True},
        {"num_nodes": 0},
        {"max_epochs": -1},
        {"max_steps": -2},
        {"limit_train_batches": 1.5},
        {"limit_val_batches": -1},
        {"check_val_every_n_epoch": 0},
        {"strategy": "no-such-strategy"},
        {"strategy": 3},
        {"callbacks": [object()]},
    ],
)
def test_bad_trainer_arguments_are_configuration_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(prec.ConfigurationError):
        prec.Trainer(accelerator="cpu", **kwargs)  # type: ignore[arg-type]


def test_trainer_exposes_the_selection() -> None:
    trainer = prec.Trainer(accelerator="cpu", precision="16-true")
    assert trainer.precision == "16-true"
    assert trainer.accelerator.name == "cpu"
    assert isinstance(trainer.precision_plugin, prec.TruePrecision)
    assert trainer.global_step == 0 and trainer.current_epoch == 0 and trainer.callback_metrics == {}


@pytest.mark.parametrize(("alias", "name"), [("gpu", "cuda"), ("tpu", "xla"), ("CPU", "cpu"), ("cuda", "cuda")])
def test_accelerator_aliases_resolve_to_the_registered_name(alias: str, name: str) -> None:
    assert prec.get_registry().canonical_accelerator(alias) == name


@pytest.mark.parametrize("alias", ["gpu", "tpu"])
def test_an_alias_of_an_installed_but_unavailable_accelerator_says_why(alias: str) -> None:
    registry = prec.get_registry()
    canonical = registry.canonical_accelerator(alias)
    if canonical not in registry.accelerators:
        pytest.skip(f"the plugin for {canonical} is not installed here")
    if registry.accelerator(canonical).availability():
        pytest.skip(f"{canonical} is available on this machine")
    with pytest.raises(prec.AcceleratorUnavailableError, match=f"accelerator='{alias}' is installed but not available"):
        prec.Trainer(accelerator=alias)
