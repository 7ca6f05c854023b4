"""Plugin discovery: entry points of group ``prec``, loaded once per process, each plugin isolated.

A plugin that fails to import, fails pluggy's validation, implements an unknown hook or raises inside a hook is
recorded with status ``error`` (and a :class:`~prec.errors.PluginWarning`); everything it registered is discarded
and every other plugin keeps working. ``PREC_STRICT_PLUGINS=1`` turns those errors into :class:`PluginError`.

Environment variables (read when the registry is built):

``PREC_DISABLE_PLUGIN_AUTOLOAD=1``  load no entry points; only plugins passed to :func:`register_plugin`.
``PREC_LOAD_PLUGINS=a,b``           load only these entry points (by plugin or distribution name).
``PREC_DISABLED_PLUGINS=a,b``       skip these entry points (by plugin or distribution name).
``PREC_TRACE_PLUGINS=1``            trace every hook call and registration to stderr.
``PREC_STRICT_PLUGINS=1``           raise on the first plugin error instead of warning.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from prec import hookspecs
from prec._warnings import warn
from prec.errors import PluginError, PluginWarning
from prec.registry import AcceleratorEntry, Origin, PrecisionEntry, Registry, StrategyEntry

ENTRY_POINT_GROUP = "prec"
HOOK_ORDER = ("prec_register_accelerators", "prec_register_precisions", "prec_register_strategies")

_lock = threading.RLock()
_registry: Registry | None = None
_explicit: dict[str, object] = {}


@dataclass(frozen=True)
class PluginInfo:
    """One plugin as ``prec list`` reports it."""

    name: str
    distribution: str | None
    version: str | None
    status: str  # "ok", "error" or "disabled"
    error: str | None = None
    module: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "status": self.status,
            "error": self.error,
            "module": self.module,
        }


def get_registry() -> Registry:
    """The process-wide registry, built from the installed plugins on first use and cached."""
    global _registry
    registry = _registry
    if registry is None:
        with _lock:
            if _registry is None:
                _registry = _build_registry()
            registry = _registry
    return registry


def reset_registry() -> None:
    """Forget the cached registry, so the next use scans entry points again (after installing a plugin)."""
    global _registry
    with _lock:
        _registry = None


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register a plugin object in code (tests, notebooks); it takes part in the next registry build.

    Returns the name it was registered under. Explicit plugins load even with
    ``PREC_DISABLE_PLUGIN_AUTOLOAD=1`` and follow the same conflict rules as installed ones.
    """
    plugin_name = name or getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{id(plugin):x}"
    with _lock:
        _explicit[plugin_name] = plugin
        reset_registry()
    return plugin_name


def unregister_plugin(name: str) -> None:
    """Remove a plugin added with :func:`register_plugin`."""
    with _lock:
        _explicit.pop(name, None)
        reset_registry()


def list_plugins() -> list[PluginInfo]:
    return list(get_registry().plugins.values())


# -- building ------------------------------------------------------------------------------------------------


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _env_list(name: str) -> set[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return {part.strip().lower() for part in value.split(",") if part.strip()}


class _Loader:
    """One registry build: discovers plugins, calls their hooks one plugin at a time, records their fate."""

    def __init__(self) -> None:
        self.strict = _env_flag("PREC_STRICT_PLUGINS")
        self.trace = _env_flag("PREC_TRACE_PLUGINS")
        self.manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.manager.add_hookspecs(hookspecs)
        self.registry = Registry()
        self.origins: dict[str, Origin] = {}

    def _trace(self, message: str) -> None:
        if self.trace:
            print(f"prec: {message}", file=sys.stderr)

    def _fail(self, info: PluginInfo) -> None:
        self.registry.plugins[info.name] = info
        message = f"prec plugin {info.name!r}" + (f" ({info.distribution})" if info.distribution else "")
        message += f" failed and was skipped: {info.error}"
        self._trace(message)
        if self.strict:
            raise PluginError(message + " (PREC_STRICT_PLUGINS is set)")
        warn(message, PluginWarning)

    def add(self, name: str, plugin: object, origin: Origin, module: str | None) -> None:
        try:
            self.manager.register(plugin, name=name)
            unknown = [caller.name for caller in self.manager.get_hookcallers(plugin) or () if not caller.has_spec()]
            if unknown:
                self.manager.unregister(plugin)
                known = ", ".join(HOOK_ORDER)
                raise PluginError(f"implements unknown hook(s) {', '.join(unknown)}; known hooks: {known}")
        except Exception as error:  # noqa: BLE001 - a broken plugin must not break prec
            self._fail(PluginInfo(name, origin.distribution, origin.version, "error", _describe(error), module))
            return
        self.origins[name] = origin
        self.registry.plugins[name] = PluginInfo(name, origin.distribution, origin.version, "ok", None, module)

    def run_hooks(self) -> None:
        for name, origin in list(self.origins.items()):
            plugin = self.manager.get_plugin(name)
            staged: list[tuple[Callable[[Any], None], Any]] = []
            callbacks = self._register_callbacks(origin, staged)
            try:
                for hook_name in HOOK_ORDER:
                    for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
                        if impl.plugin is plugin:
                            self._trace(f"calling {hook_name} of plugin {name!r}")
                            offered = {"register": callbacks[hook_name]}
                            impl.function(**{arg: offered[arg] for arg in impl.argnames})
            except Exception as error:  # noqa: BLE001
                info = self.registry.plugins[name]
                self._fail(PluginInfo(name, info.distribution, info.version, "error", _describe(error), info.module))
                continue
            for add, entry in staged:
                add(entry)

    def _register_callbacks(self, origin: Origin, staged: list[tuple[Callable[[Any], None], Any]]) -> dict[str, Any]:
        registry = self.registry

        def register_accelerator(accelerator: type, *, priority: int = 0) -> None:
            from prec.accelerator import Accelerator

            if not (isinstance(accelerator, type) and issubclass(accelerator, Accelerator)) or not accelerator.name:
                raise TypeError(f"register() takes an Accelerator subclass with a name, got {accelerator!r}")
            entry = AcceleratorEntry(accelerator.name, accelerator, tuple(accelerator.aliases), origin, priority)
            self._trace(f"  {origin.plugin} registers accelerator {entry.name!r}")
            staged.append((registry.add_accelerator, entry))

        def register_precision(
            name: str,
            accelerator: str,
            factory: Callable[..., Any],
            *,
            aliases: Iterable[str] = (),
            priority: int = 0,
            description: str = "",
        ) -> None:
            if not isinstance(name, str) or not name or not isinstance(accelerator, str) or not callable(factory):
                raise TypeError("register() takes (name: str, accelerator: str, factory: callable)")
            entry = PrecisionEntry(name, accelerator, factory, origin, tuple(aliases), priority, description)
            self._trace(f"  {origin.plugin} registers precision {name!r} on {accelerator!r}")
            staged.append((registry.add_precision, entry))

        def register_strategy(
            name: str,
            factory: Callable[..., Any],
            *,
            accelerators: Iterable[str] | None = None,
            precisions: Iterable[str] | None = None,
            priority: int = 0,
            description: str = "",
        ) -> None:
            if not isinstance(name, str) or not name or not callable(factory):
                raise TypeError("register() takes (name: str, factory: callable)")
            entry = StrategyEntry(
                name,
                factory,
                origin,
                None if accelerators is None else frozenset(accelerators),
                None if precisions is None else frozenset(precisions),
                priority,
                description,
            )
            self._trace(f"  {origin.plugin} registers strategy {name!r}")
            staged.append((registry.add_strategy, entry))

        return {
            "prec_register_accelerators": register_accelerator,
            "prec_register_precisions": register_precision,
            "prec_register_strategies": register_strategy,
        }


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _entry_points() -> list[EntryPoint]:
    """All ``prec`` entry points, one per (distribution, name), even when two distributions share a name."""
    seen: set[tuple[str, str]] = set()
    points: list[EntryPoint] = []
    for point in entry_points(group=ENTRY_POINT_GROUP):
        dist = point.dist.name if point.dist is not None else ""
        key = (dist.lower().replace("_", "-"), point.name)
        if key not in seen:  # the same distribution found twice on sys.path
            seen.add(key)
            points.append(point)
    return points


def _build_registry() -> Registry:
    loader = _Loader()
    from prec import strategy as core_strategies  # prec-core's own strategies, always present

    loader.add("prec.core", core_strategies, Origin("prec.core", "prec-core", _version("prec-core")), "prec.strategy")
    for name, plugin in _explicit.items():
        loader.add(name, plugin, Origin(name), getattr(plugin, "__name__", None))
    if not _env_flag("PREC_DISABLE_PLUGIN_AUTOLOAD"):
        only = _env_list("PREC_LOAD_PLUGINS")
        disabled = _env_list("PREC_DISABLED_PLUGINS") or set()
        points = _entry_points()
        name_counts: dict[str, int] = {}
        for point in points:
            name_counts[point.name] = name_counts.get(point.name, 0) + 1
        for point in points:
            dist = point.dist.name if point.dist is not None else None
            version = point.dist.version if point.dist is not None else None
            # A name two distributions share is qualified by both, so neither silently hides the other.
            name = point.name if name_counts[point.name] == 1 else f"{dist}:{point.name}"
            keys = {point.name.lower(), name.lower(), (dist or "").lower(), (dist or "").lower().replace("_", "-")}
            if (only is not None and not keys & only) or keys & disabled:
                loader.registry.plugins[name] = PluginInfo(name, dist, version, "disabled", None, point.value)
                loader._trace(f"plugin {name!r} disabled by environment")
                continue
            loader._trace(f"loading plugin {name!r} from {dist} ({point.value})")
            try:
                plugin = point.load()
            except Exception as error:  # noqa: BLE001
                loader._fail(PluginInfo(name, dist, version, "error", _describe(error), point.value))
                continue
            loader.add(name, plugin, Origin(name, dist, version), point.value)
    loader.run_hooks()
    loader.registry.finalize()
    for conflict in loader.registry.conflicts.values():
        if loader.strict:
            raise PluginError(str(conflict))
        warn(str(conflict), PluginWarning)
    return loader.registry


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None
