"""Plugins registered in code: isolation of broken plugins, the conflict rule, strict mode, tracing, messages.

Installed packages (entry points, the environment variables that select them, ``prec list``) are tested in
test_plugin_packages.py; here every plugin is a real object passed to ``prec.register_plugin``.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
import torch

import prec
from prec.cli.app import collect
from prec.plugin import manager as plugin_loader
from prec.plugin.entries import PluginInfo
from prec.plugin.registry import Registry

Register = Callable[[object, str], str]


@pytest.fixture
def register() -> Iterator[Register]:
    """``register(plugin, name)`` for this test only; the registry is rebuilt before and after."""
    names: list[str] = []
    prec.reset_registry()

    def add(plugin: object, name: str) -> str:
        names.append(prec.register_plugin(plugin, name=name))
        return names[-1]

    yield add
    for name in names:
        prec.unregister_plugin(name)
    prec.reset_registry()


def precisions(*pairs: tuple[str, str], priority: int = 0, fail: str | None = None, **options: Any) -> object:
    """A plugin registering float32 precisions under the given (name, accelerator) pairs; ``fail`` raises after."""

    @prec.hookimpl
    def prec_register_precisions(register: Any) -> None:
        for name, accelerator in pairs:
            register(name, accelerator, named_float32(name), priority=priority, **options)
        if fail is not None:
            raise RuntimeError(fail)

    return types.SimpleNamespace(prec_register_precisions=prec_register_precisions)


def named_float32(name: str) -> Callable[..., prec.Precision]:
    """A factory of float32 precisions named ``name`` (the registry checks the name a factory returns)."""

    def factory(accelerator: prec.Accelerator, **options: Any) -> prec.Precision:
        precision = prec.Precision(**options)
        precision.name = name
        return precision

    return factory


def accelerator(name: str, aliases: Iterable[str] = (), priority: int = 0, broken: bool = False) -> object:
    """A plugin registering an always-available accelerator that runs on the CPU (``broken``: whose constructor
    raises, as one probing a missing driver would)."""

    def init(self: prec.Accelerator) -> None:
        if broken:
            raise OSError("no driver")

    attributes = {
        "__init__": init,
        "name": name,
        "aliases": tuple(aliases),
        "device_type": "cpu",
        "availability": lambda self: prec.Availability(True),
        "device_count": lambda self: 1,
    }
    cls = type(f"{name.title()}Accelerator", (prec.Accelerator,), attributes)

    @prec.hookimpl
    def prec_register_accelerators(register: Any) -> None:
        register(cls, priority=priority)

    return types.SimpleNamespace(prec_register_accelerators=prec_register_accelerators)


# -- isolation ------------------------------------------------------------------------------------------------
def test_a_hook_that_raises_is_reported_and_everything_else_works(register: Register) -> None:
    register(precisions(("fp8-demo", "cpu"), fail="vendor library missing"), "broken-demo")
    with pytest.warns(prec.PluginWarning, match=r"'broken-demo' failed and was skipped.*vendor library missing"):
        registry = prec.get_registry()
    info = registry.plugins["broken-demo"]
    assert info.status == "error"
    assert info.error == "prec_register_precisions raised RuntimeError: vendor library missing"
    assert ("fp8-demo", "cpu") not in registry.precisions  # what it registered before failing is discarded
    assert prec.Trainer(accelerator="cpu", precision="16-true").precision == "16-true"
    listed = {plugin["name"]: plugin for plugin in collect()["plugins"]}
    assert listed["broken-demo"]["status"] == "error" and "vendor library" in listed["broken-demo"]["error"]


def test_asking_for_what_the_broken_plugin_registered_names_it(register: Register) -> None:
    register(precisions(("fp8-demo", "cpu"), fail="vendor library missing"), "broken-demo")
    with pytest.warns(prec.PluginWarning):
        prec.get_registry()
    with pytest.raises(prec.UnknownPrecisionError) as error:
        prec.Trainer(accelerator="cpu", precision="fp8-demo")
    assert "would have come from plugin 'broken-demo' (registered in code), which registered it and then failed" in str(
        error.value
    )
    assert "vendor library missing" in str(error.value)


@pytest.mark.parametrize(
    ("hooks", "message"),
    [
        ({"prec_register_precisions": lambda register: register("x", "cpu", "no factory")}, "is not callable"),
        (
            {"prec_register_precisions": lambda register: register("x", "cpu", named_float32("x"), aliases="xx")},
            "aliases",
        ),
        (
            {"prec_register_precisions": lambda register: register("x", "cpu", named_float32("x"), priority="high")},
            "priority",
        ),
        ({"prec_register_accelerators": lambda register: register(object)}, "Accelerator subclass"),
        ({"prec_register_precision": lambda register: None}, "did you mean prec_register_precisions"),
    ],
    ids=["factory", "aliases-string", "priority", "not-an-accelerator", "misspelt-hook"],
)
def test_bad_registrations_break_only_their_plugin(register: Register, hooks: dict, message: str) -> None:
    register(types.SimpleNamespace(**{name: prec.hookimpl(function) for name, function in hooks.items()}), "bad")
    with pytest.warns(prec.PluginWarning, match=f"'bad' failed.*{message}"):
        registry = prec.get_registry()
    assert registry.plugins["bad"].status == "error" and "cpu" in registry.accelerators


def test_a_plugin_registering_one_key_twice_is_broken(register: Register) -> None:
    register(precisions(("twice", "cpu"), ("twice", "cpu")), "doubled")
    with pytest.warns(prec.PluginWarning, match="registers precision 'twice@cpu' twice"):
        assert prec.get_registry().plugins["doubled"].status == "error"


def test_a_hook_without_the_decorator_is_reported(register: Register) -> None:
    register(types.SimpleNamespace(prec_register_precisions=lambda register: None), "undecorated")
    with pytest.warns(prec.PluginWarning, match=r"defines prec_register_precisions without the @prec.hookimpl"):
        prec.get_registry()


def test_an_accelerator_that_fails_to_build_names_its_plugin(register: Register) -> None:
    register(accelerator("fragile", broken=True), "fragile-plugin")
    with pytest.raises(prec.PluginError, match="accelerator 'fragile' of plugin 'fragile-plugin'.*OSError: no driver"):
        prec.Trainer(accelerator="fragile")


# -- the conflict rule ------------------------------------------------------------------------------------------
def test_equal_priority_is_a_conflict_naming_both_plugins(register: Register) -> None:
    register(precisions(("16-mixed", "cpu")), "first")
    register(precisions(("16-mixed", "cpu")), "second")
    with pytest.warns(prec.PluginWarning, match="'16-mixed' on 'cpu' is registered by both plugin 'first'"):
        registry = prec.get_registry()
    with pytest.raises(prec.UnsupportedPrecisionError) as error:
        prec.Trainer(accelerator="cpu", precision="16-mixed")
    message = str(error.value)
    assert "plugin 'first' (registered in code) and plugin 'second' (registered in code)" in message
    assert "never picks one by load order" in message and "priority=1" in message
    assert "PREC_DISABLED_PLUGINS=second" in message
    assert any("'16-mixed' on 'cpu'" in text for text in collect()["conflicts"])
    assert ("16-mixed", "cpu") not in registry.precisions


def test_registration_order_does_not_matter(register: Register) -> None:
    register(precisions(("16-mixed", "cpu")), "second")
    register(precisions(("16-mixed", "cpu")), "first")
    with pytest.warns(prec.PluginWarning, match="registered by both"):
        assert ("precision", "16-mixed@cpu") in prec.get_registry().conflicts


def test_a_higher_priority_wins_and_is_recorded(register: Register) -> None:
    register(precisions(("16-mixed", "cpu")), "first")
    register(precisions(("16-mixed", "cpu")), "second")
    register(precisions(("16-mixed", "cpu"), priority=1), "winner")
    registry = prec.get_registry()  # no warning: the tie below the top does not matter
    assert registry.precision_entry("16-mixed", "cpu").origin.plugin == "winner"
    winner, losers = registry.overrides[("precision", "16-mixed@cpu")]
    assert winner.plugin == "winner" and {origin.plugin for origin in losers} == {"first", "second"}


def test_priority_replaces_a_built_in_pair(register: Register) -> None:
    register(precisions(("bf16-mixed", "cpu"), priority=1), "replacement")
    assert prec.get_registry().precision_entry("bf16-mixed", "cpu").origin.plugin == "replacement"
    with pytest.warns(prec.PrecWarning, match="'replacement'.*overrides plugin 'cpu' from prec-cpu") as record:
        assert prec.get_precision("bf16-mixed", accelerator="cpu").compute_dtype == torch.float32
    assert record[0].filename == __file__  # attributed to the caller's line


def test_two_accelerators_with_one_name_conflict(register: Register) -> None:
    register(accelerator("twin"), "twin-a")
    register(accelerator("twin"), "twin-b")
    with pytest.warns(prec.PluginWarning, match="accelerator 'twin' is registered by both"):
        prec.get_registry()
    with pytest.raises(prec.UnknownAcceleratorError, match="plugin 'twin-a'.*and plugin 'twin-b'"):
        prec.Trainer(accelerator="twin")


def test_an_alias_two_accelerators_claim_conflicts(register: Register) -> None:
    register(accelerator("left", aliases=["side"]), "left")
    register(accelerator("right", aliases=["side"]), "right")
    with pytest.warns(prec.PluginWarning, match="accelerator alias 'side'"):
        registry = prec.get_registry()
    with pytest.raises(prec.UnknownAcceleratorError, match="'side' \\(for 'left' and 'right'\\)"):
        registry.accelerator("side")
    assert registry.accelerator("left").name == "left"


def test_an_alias_never_shadows_a_name(register: Register) -> None:
    register(accelerator("imposter", aliases=["cpu"]), "imposter")
    register(precisions(("imposter-true", "cpu"), aliases=["bf16"]), "alias-thief")
    with pytest.warns(prec.PluginWarning, match="is ignored"):
        registry = prec.get_registry()
    assert (
        registry.accelerator("cpu").name == "cpu"
        and type(registry.accelerator("cpu")).__name__ != "ImposterAccelerator"
    )
    with pytest.warns(prec.LegacyPrecisionWarning):
        assert registry.normalize("bf16") == "bf16-mixed"


def test_a_new_precision_alias_works(register: Register) -> None:
    register(precisions(("wide-true", "cpu"), aliases=["wide"]), "wide")
    assert prec.get_precision("wide", accelerator="cpu").name == "wide-true"
    assert prec.get_registry().normalize("wide") == "wide-true"


# -- strict mode, tracing, explicit registration ------------------------------------------------------------------
def test_strict_mode_raises_on_a_broken_plugin(register: Register, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREC_STRICT_PLUGINS", "1")
    register(precisions(fail="boom"), "broken-strict")
    with pytest.raises(prec.PluginError, match="'broken-strict' failed.*boom.*PREC_STRICT_PLUGINS is set"):
        prec.get_registry()


def test_strict_mode_raises_on_a_conflict(register: Register, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREC_STRICT_PLUGINS", "1")
    register(precisions(("16-mixed", "cpu")), "first")
    register(precisions(("16-mixed", "cpu")), "second")
    with pytest.raises(prec.PluginError, match="registered by both"):
        prec.get_registry()


def test_trace_prints_hook_calls_to_stderr(
    register: Register, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PREC_TRACE_PLUGINS", "1")
    register(precisions(("traced-true", "cpu")), "traced")
    prec.get_registry()
    err = capsys.readouterr().err
    assert "prec: calling prec_register_precisions of plugin 'traced'" in err
    assert "prec:   traced registers precision 'traced-true@cpu' (priority 0)" in err
    assert "prec: registry built in" in err


def test_without_autoload_only_explicit_plugins_load(register: Register, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREC_DISABLE_PLUGIN_AUTOLOAD", "1")
    register(accelerator("solo"), "solo")
    register(precisions(("32-true", "solo")), "solo-precisions")
    registry = prec.get_registry()
    assert set(registry.plugins) == {"prec.core", "solo", "solo-precisions"}
    assert prec.Trainer(accelerator="solo").accelerator.name == "solo"
    with pytest.raises(prec.UnknownAcceleratorError, match="PREC_DISABLE_PLUGIN_AUTOLOAD is set"):
        prec.Trainer(accelerator="cpu")


def test_an_installed_plugin_also_registered_in_code_loads_once(register: Register) -> None:
    import prec_cpu

    register(prec_cpu, "cpu-in-code")
    registry = prec.get_registry()  # no conflict between the object and itself
    assert registry.plugins["cpu-in-code"].status == "ok"
    assert registry.plugins["cpu"].status == "disabled"
    assert registry.plugins["cpu"].reason == "the same object is already loaded as plugin 'cpu-in-code'"


def test_registering_in_code_does_not_scan_entry_points_again(register: Register) -> None:
    prec.get_registry()
    scan = plugin_loader._entry_points()
    register(precisions(("later-true", "cpu")), "later")
    assert ("later-true", "cpu") in prec.get_registry().precisions
    assert plugin_loader._entry_points() is scan  # the scan is cached per process
    prec.reset_registry()  # after installing a package: scan again
    assert plugin_loader._entry_points() is not scan


# -- messages for broken and disabled plugins, straight from registry data ---------------------------------------
def _registry_with(*infos: PluginInfo) -> Registry:
    registry = Registry()
    registry.plugins = {info.name: info for info in infos}
    registry.finalize()
    return registry


def test_a_broken_builtin_package_definitely_would_have_provided_the_pair() -> None:
    registry = _registry_with(
        PluginInfo("double", "prec-double", "0.1.0", "error", "import failed: ImportError: libm"),
        PluginInfo("other", "prec-other", "1.0", "error", "import failed: OSError: x"),
    )
    with pytest.raises(prec.UnsupportedPrecisionError) as error:
        registry.precision_entry("64-true", "cpu")
    message = str(error.value)
    assert (
        "would have come from plugin 'double' from prec-double 0.1.0, which failed (import failed: ImportError"
        in message
    )
    assert "ImportError: libm" in message and "prec-other" not in message
    assert "pip install prec-double" not in message  # it is installed; reinstalling is not the fix


def test_an_unrelated_broken_plugin_may_have_provided_it() -> None:
    registry = _registry_with(PluginInfo("other", "prec-other", "1.0", "error", "OSError: x"))
    with pytest.raises(prec.UnsupportedPrecisionError, match="may have provided it: plugin 'other' from prec-other"):
        registry.precision_entry("fp8-mixed", "cpu")


def test_a_disabled_builtin_package_is_named() -> None:
    info = PluginInfo("cuda", "prec-cuda", "0.1.0", "disabled", reason="named in PREC_DISABLED_PLUGINS")
    with pytest.raises(
        prec.UnknownAcceleratorError, match=r"prec-cuda 0.1.0, which is disabled \(named in PREC_DISABLED_PLUGINS\)"
    ):
        _registry_with(info).accelerator("gpu")


# -- strategies -------------------------------------------------------------------------------------------------
class CountingStrategy(prec.Strategy):
    """The single-device strategy under another name."""


def strategy_plugin(name: str, **options: Any) -> object:
    @prec.hookimpl
    def prec_register_strategies(register: Any) -> None:
        register(name, CountingStrategy, description="single device, counted", **options)

    return types.SimpleNamespace(prec_register_strategies=prec_register_strategies)


def test_a_registered_strategy_is_selectable_and_restricted(register: Register) -> None:
    register(strategy_plugin("counting", precisions=["32-true"]), "counting")
    assert isinstance(prec.Trainer(accelerator="cpu", strategy="counting").strategy, CountingStrategy)
    with pytest.raises(prec.ConfigurationError, match="does not support precision '16-true'; it supports: 32-true"):
        prec.Trainer(accelerator="cpu", strategy="counting", precision="16-true")


def test_two_strategies_with_one_name_conflict(register: Register) -> None:
    register(strategy_plugin("twin-strategy"), "strategy-a")
    register(strategy_plugin("twin-strategy"), "strategy-b")
    with pytest.warns(prec.PluginWarning, match="strategy 'twin-strategy' is registered by both"):
        prec.get_registry()
    with pytest.raises(prec.UnknownStrategyError, match="plugin 'strategy-a'.*and plugin 'strategy-b'"):
        prec.Trainer(accelerator="cpu", strategy="twin-strategy")
