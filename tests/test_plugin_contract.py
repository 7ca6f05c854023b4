"""What the registry checks for the user: what a precision factory returns, how its failures surface, overrides
announced, registration mistakes refused at load with the plugin named, and one selection front door."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

import prec
from prec.cli.app import collect
from prec.plugin import catalogue
from prec.plugin.registry import Registry

Register = Callable[[object, str], str]


@pytest.fixture
def register() -> Iterator[Register]:
    names: list[str] = []
    prec.reset_registry()

    def add(plugin: object, name: str) -> str:
        names.append(prec.register_plugin(plugin, name=name))
        return names[-1]

    yield add
    for name in names:
        prec.unregister_plugin(name)
    prec.reset_registry()


def pair_plugin(name: str, accelerator: str, factory: Callable[..., Any], priority: int = 0, **opts: Any) -> object:
    @prec.hookimpl(**opts)
    def prec_register_precisions(register: Any) -> None:
        register(name, accelerator, factory, priority=priority)

    return types.SimpleNamespace(prec_register_precisions=prec_register_precisions)


def _fp16_named_bf16_mixed(accelerator: Any, **options: Any) -> prec.Precision:
    return prec.TruePrecision("bf16-mixed", torch.float16, device_type="cpu")


# -- what a factory returns ---------------------------------------------------------------------------------
def test_a_factory_returning_another_precision_is_a_plugin_error(register: Register) -> None:
    register(pair_plugin("32-true", "cpu", _fp16_named_bf16_mixed, priority=1), "hijack")
    with pytest.warns(prec.PrecWarning, match="overrides"), pytest.raises(prec.PluginError) as info:
        prec.Trainer(accelerator="cpu", precision="32-true", enable_progress_bar=False, logger=False)
    assert "'hijack'" in str(info.value) and "named 'bf16-mixed'" in str(info.value)
    with pytest.warns(prec.PrecWarning), pytest.raises(prec.PluginError, match="hijack"):
        prec.Trainer(accelerator="cpu", precision=None, enable_progress_bar=False, logger=False)


def test_a_factory_returning_something_else_is_a_plugin_error(register: Register) -> None:
    register(pair_plugin("odd-true", "cpu", lambda accelerator, **options: torch.float16), "odd")
    with pytest.raises(prec.PluginError, match="'odd'.*not a prec.Precision"):
        prec.get_precision("odd-true", "cpu")


@pytest.mark.parametrize("error", [RuntimeError("vendor library missing"), AttributeError("x"), SystemExit(3)])
def test_factory_failures_are_plugin_errors_with_the_cause(register: Register, error: BaseException) -> None:
    def factory(accelerator: Any, **options: Any) -> prec.Precision:
        raise error

    register(pair_plugin("fail-true", "cpu", factory), "failing")
    with pytest.raises(prec.PluginError, match="'failing'") as info:
        prec.get_precision("fail-true", "cpu")
    assert info.value.__cause__ is error


def test_a_configuration_error_from_a_factory_passes_through(register: Register) -> None:
    def factory(accelerator: Any, **options: Any) -> prec.Precision:
        raise prec.UnsupportedPrecisionError("this device cannot")

    register(pair_plugin("picky-true", "cpu", factory), "picky")
    with pytest.raises(prec.UnsupportedPrecisionError, match="this device cannot"):
        prec.get_precision("picky-true", "cpu")


def test_an_override_of_a_builtin_is_shown_in_prec_list(register: Register) -> None:
    register(
        pair_plugin("bf16-true", "cpu", lambda acc, **kw: prec.TruePrecision("bf16-true", torch.bfloat16), 1), "mine"
    )
    overrides = collect()["overrides"]
    assert any("'mine'" in text and "prec-cpu" in text for text in overrides), overrides


def test_provenance_names_the_distribution_and_version() -> None:
    prec.reset_registry()
    registry = prec.get_registry()
    precision = prec.get_precision("32-true", "cpu")
    origin = registry.provenance(precision)
    assert origin is not None and origin.distribution == "prec-cpu" and origin.version
    assert "prec-cpu" in registry.describe(precision) and "32-true" in registry.describe(precision)
    assert registry.provenance(prec.Precision()) is None


# -- one front door -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"accelerator": None}, "accelerator=None"),
        ({"accelerator": 3}, "accelerator=3"),
        ({"accelerator": ""}, "accelerator=''"),
        ({"precision": 3.5}, "precision=3.5"),
        ({"precision": ["32-true"]}, "precision=\\['32-true'\\]"),
    ],
)
def test_get_precision_rejects_wrong_types_naming_the_argument(kwargs: dict[str, Any], argument: str) -> None:
    arguments = {"precision": "32-true", "accelerator": "cpu", **kwargs}
    with pytest.raises(prec.ConfigurationError, match=argument):
        prec.get_precision(arguments.pop("precision"), arguments.pop("accelerator"))


@pytest.mark.parametrize("name", ["CPU", "Cpu", "Auto", "AUTO", " cpu "])
def test_accelerator_names_are_case_insensitive(name: str) -> None:
    assert prec.get_precision("32-true", name).name == "32-true"
    trainer = prec.Trainer(accelerator=name, precision="32-true", enable_progress_bar=False, logger=False)
    assert trainer.accelerator.name == "cpu"


def test_the_name_is_normalised_once_per_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    original = Registry.normalize

    def counting(self: Registry, value: Any) -> str:
        calls.append(value)
        return original(self, value)

    monkeypatch.setattr(Registry, "normalize", counting)
    with pytest.warns(prec.LegacyPrecisionWarning):
        prec.get_precision("bf16", "cpu")
    assert calls == ["bf16"]


def test_select_precision_returns_the_auto_reason() -> None:
    registry = prec.get_registry()
    accelerator = registry.select_accelerator("cpu")
    precision, reason = registry.select_precision("auto", accelerator)
    assert isinstance(precision, prec.Precision) and reason
    assert registry.select_precision("32-true", accelerator, {})[1] is None
    with pytest.raises(prec.ConfigurationError, match="precision_options"):
        registry.select_precision("32-true", accelerator, ["x"])  # type: ignore[arg-type]


# -- registration rules ---------------------------------------------------------------------------------------
def _broken(name: str) -> prec.plugin.entries.PluginInfo:  # type: ignore[name-defined]
    return prec.get_registry().plugins[name]


def _float32(accelerator: Any, **options: Any) -> prec.Precision:
    return prec.Precision()


def test_a_precision_on_a_builtin_alias_is_refused_at_registration(register: Register) -> None:
    register(pair_plugin("32-true", "gpu", _float32), "on-alias")
    with pytest.warns(prec.PluginWarning, match="'on-alias'.*alias of accelerator 'cuda'"):
        info = _broken("on-alias")
    assert info.status == "error" and isinstance(info.exception, prec.PluginError)
    assert not info.error.startswith("PluginError: PluginError")


def test_a_precision_on_a_plugin_alias_is_dropped_with_a_warning(register: Register) -> None:
    class Side(prec.Accelerator):
        name, aliases, device_type = "left", ("side",), "cpu"

    @prec.hookimpl
    def prec_register_accelerators(register: Any) -> None:
        register(Side)

    register(pair_plugin("32-true", "side", _float32), "early")  # registers before the alias is known
    register(types.SimpleNamespace(prec_register_accelerators=prec_register_accelerators), "late")
    with pytest.warns(prec.PluginWarning, match="'early'.*'side', an alias of accelerator 'left'"):
        registry = prec.get_registry()
    assert ("32-true", "side") not in registry.precisions


@pytest.mark.parametrize(
    "factory",
    [lambda: None, lambda accelerator, device: None, lambda *, accelerator: None],
    ids=["no-arguments", "two-required", "keyword-only"],
)
def test_a_factory_that_cannot_take_the_accelerator_is_refused(register: Register, factory: Any) -> None:
    register(pair_plugin("sig-true", "cpu", factory), "badsig")
    with pytest.warns(prec.PluginWarning, match="'badsig'.*factory\\(accelerator, \\*\\*options\\)"):
        assert _broken("badsig").status == "error"


def test_a_factory_without_options_gets_a_configuration_error_for_options(register: Register) -> None:
    register(pair_plugin("plain-true", "cpu", lambda accelerator: prec.TruePrecision("plain-true", torch.float32)), "p")
    assert prec.get_precision("plain-true", "cpu").name == "plain-true"
    with pytest.raises(prec.ConfigurationError, match="takes no options"):
        prec.get_precision("plain-true", "cpu", foo=1)


@pytest.mark.parametrize(
    "opts",
    [{"wrapper": True}, {"hookwrapper": True}, {"tryfirst": True}, {"trylast": True}, {"optionalhook": True},
     {"specname": "prec_register_precisions"}],
    ids=lambda opts: next(iter(opts)),
)  # fmt: skip
def test_meaningless_hookimpl_options_are_refused(register: Register, opts: dict[str, Any]) -> None:
    if opts.get("wrapper") or opts.get("hookwrapper"):

        def prec_register_precisions(register: Any) -> Iterator[None]:
            yield

        plugin = types.SimpleNamespace(prec_register_precisions=prec.hookimpl(**opts)(prec_register_precisions))
    else:
        plugin = pair_plugin("opt-true", "cpu", _float32, **opts)
    register(plugin, "optioned")
    key = next(iter(opts))
    with pytest.warns(prec.PluginWarning, match=f"'optioned'.*{key}=.*means nothing"):
        info = _broken("optioned")
    assert isinstance(info.exception, prec.PluginError)
    assert ("precision", "opt-true@cpu") not in info.registered


def test_strict_mode_keeps_the_original_exception(register: Register, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREC_STRICT_PLUGINS", "1")
    register(pair_plugin("32-true", "gpu", _float32), "strict-alias")
    with pytest.raises(prec.PluginError, match="strict-alias") as info:
        prec.get_registry()
    assert isinstance(info.value.__cause__, prec.PluginError)


# -- the catalogue and the module map -----------------------------------------------------------------------
def test_the_first_party_catalogue_is_public_and_the_registry_uses_it() -> None:
    assert catalogue.known_gap("64-true", "xla") and catalogue.known_gap("64-true", "XLA")
    assert catalogue.known_gap("32-true", "cpu") is None
    assert catalogue.package_for_pair("64-true", "cpu") == "prec-double"
    assert catalogue.package_for_accelerator("gpu") == "prec-cuda"
    from prec.plugin import registry

    assert registry.KNOWN_GAPS is catalogue.KNOWN_GAPS


def test_core_strategies_are_a_plugin_module_of_their_own() -> None:
    import prec.plugin.manager
    import prec.strategies.base
    import prec.training.builtin_strategies

    assert not hasattr(prec.strategies.base, "prec_register_strategies")
    registry = prec.get_registry()
    assert registry.plugins["prec.core"].module == "prec.training.builtin_strategies"
    assert {"single", "ddp", "fsdp"} <= set(registry.strategies)
    assert registry.strategies["ddp"].origin.distribution == "prec-core"
    assert not hasattr(prec.plugin.manager, "list_plugins")
    from prec.plugin.entries import PluginInfo

    assert type(registry.plugins["prec.core"]) is PluginInfo


def test_building_the_core_plugin_does_not_import_torch_distributed() -> None:
    import subprocess

    code = (
        "import sys, prec; from prec.training.composition import get_registry; import os; "
        "os.environ['PREC_DISABLE_PLUGIN_AUTOLOAD'] = '1'; get_registry(); "
        "print('torch.distributed.fsdp' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert result.stdout.strip() == "False", result.stderr
