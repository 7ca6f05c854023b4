"""Plugin discovery: entry points of group ``prec``, scanned once per process, each plugin isolated.

A plugin that fails to import, fails pluggy's validation, implements an unknown hook, raises inside a hook or
calls ``register`` wrongly is recorded with status ``error`` (and a :class:`~prec.errors.PluginWarning`);
everything it registered is discarded and every other plugin keeps working. ``PREC_STRICT_PLUGINS=1`` turns those
errors, conflicts and unknown names in the variables below into :class:`PluginError`.

Environment variables (read when the registry is built):

``PREC_DISABLE_PLUGIN_AUTOLOAD=1``  load no entry points; only plugins passed to :func:`register_plugin`.
``PREC_LOAD_PLUGINS=a,b``           load only these entry points (by plugin or distribution name).
``PREC_DISABLED_PLUGINS=a,b``       skip these entry points (by plugin or distribution name).
``PREC_TRACE_PLUGINS=1``            trace every plugin load, hook call and registration to stderr, with timings.
``PREC_STRICT_PLUGINS=1``           raise on the first plugin error instead of warning.
``PREC_SLOW_PLUGIN_SECONDS=5``      after this many seconds (default 5) of one plugin importing or running its
                                    hooks, say on stderr which plugin prec waits for and how to skip it.

While a plugin imports and runs its hooks, what it prints goes to stderr: stdout belongs to the program (``prec
list --json`` prints its JSON there).

Two distributions that publish the same entry-point name both load, as ``"<distribution>:<name>"``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pluggy

import prec.hookspecs as hookspecs
from prec._warnings import warn
from prec.errors import PluginError, PluginWarning
from prec.names import readable_list
from prec.plugin import _verify
from prec.plugin._discovery import EntryPointInfo, SlowPluginWatch, distribution_version, scan_entry_points
from prec.plugin._registration import HOOK_ORDER, hook_problem, register_callables
from prec.plugin.entries import PluginInfo
from prec.plugin.registry import Origin, Registry, key_text, normalize_distribution

__all__ = ["CORE_PLUGIN", "PluginInfo", "get_registry", "register_plugin", "reset_registry", "unregister_plugin"]

ENTRY_POINT_GROUP = "prec"
CORE_PLUGIN = "prec.core"
_MARKER = f"{hookspecs.PROJECT_NAME}_impl"  # the attribute prec.hookimpl sets on a function

_lock = threading.RLock()
_registry: Registry | None = None
_scan: list[EntryPointInfo] | None = None
_explicit: dict[str, object] = {}


def get_registry(internal: Mapping[str, object]) -> Registry:
    """The process-wide registry, built on first use from ``internal`` (the caller's own plugins, by name: prec-core
    hands in its built-in strategies, see ``prec.training.composition``), the plugins registered in code and the
    installed entry points, and cached."""
    global _registry
    registry = _registry
    if registry is None:
        with _lock:
            if _registry is None:
                _registry = _build_registry(internal)
            registry = _registry
    return registry


def reset_registry() -> None:
    """Forget the registry and the entry-point scan: the next use scans again (after installing a plugin)."""
    global _registry, _scan
    with _lock:
        _registry = None
        _scan = None


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register a plugin object in code (tests, notebooks); it takes part in the next registry build.

    Returns the name it was registered under (registering a name again replaces the earlier object). Explicit
    plugins load even with ``PREC_DISABLE_PLUGIN_AUTOLOAD=1`` and follow the same conflict rules as installed
    ones. The installed entry points are not scanned again.
    """
    plugin_name = name or getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{id(plugin):x}"
    global _registry
    with _lock:
        _explicit[plugin_name] = plugin
        _registry = None
    return plugin_name


def unregister_plugin(name: str) -> None:
    """Remove a plugin added with :func:`register_plugin` (unknown names are ignored)."""
    global _registry
    with _lock:
        _explicit.pop(name, None)
        _registry = None


# -- building ------------------------------------------------------------------------------------------------


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _env_list(name: str) -> set[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return {part.strip().lower() for part in value.split(",") if part.strip()}


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class _Manager(pluggy.PluginManager):
    """pluggy's manager with a fast path for module plugins: pluggy inspects every module attribute with
    ``inspect.getattr_static``; a module's plain functions without the marker are skipped here directly."""

    def __init__(self, project_name: str) -> None:
        super().__init__(project_name)
        #: Hook name -> the meaningless options it was declared with, for the plugin being registered.
        self.rejected: dict[str, list[str]] = {}

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        opts = self._opts(plugin, name)
        if opts:
            rejected = _verify.meaningless_options(opts)
            if rejected:  # recorded here, reported with the plugin's name by the loader
                self.rejected[name] = rejected
                return {**opts, **dict.fromkeys(_verify.MEANINGLESS_HOOKIMPL_OPTIONS, False), "specname": None}
        return opts

    def _opts(self, plugin: Any, name: str) -> Any:
        if isinstance(plugin, types.ModuleType):
            value = plugin.__dict__.get(name)
            if isinstance(value, types.FunctionType):
                return value.__dict__.get(_MARKER)
            if not isinstance(value, types.MethodType):
                return None  # classes, modules, data: never hook implementations at module level
        return super().parse_hookimpl_opts(plugin, name)


class _Loader:
    """One registry build: registers plugins, calls their hooks one plugin at a time, records their fate."""

    def __init__(self) -> None:
        self.strict = _env_flag("PREC_STRICT_PLUGINS")
        self.tracing = _env_flag("PREC_TRACE_PLUGINS")
        self.manager = _Manager(hookspecs.PROJECT_NAME)
        self.manager.add_hookspecs(hookspecs)
        self.registry = Registry()
        self.origins: dict[str, Origin] = {}
        self.stderr = sys.stderr
        self.watch = SlowPluginWatch(self.stderr)

    def trace(self, message: str) -> None:
        if self.tracing:
            print(f"prec: {message}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def running(self, plugin: str, what: str) -> Iterator[None]:
        """Around a plugin's own code: what it prints goes to stderr, and a hang is reported after a while."""
        with contextlib.redirect_stdout(self.stderr), self.watch.watch(plugin, what):
            yield

    def problem(self, message: str, cause: BaseException | None = None) -> None:
        """A plugin problem that is not fatal: a PluginWarning, or a PluginError under PREC_STRICT_PLUGINS."""
        self.trace(message)
        if self.strict:
            raise PluginError(message + " (raised because PREC_STRICT_PLUGINS is set)") from cause
        warn(message, PluginWarning)

    def fail(self, info: PluginInfo) -> None:
        self.registry.plugins[info.name] = info
        self.problem(
            f"prec plugin {info.name!r}"
            + (f" from {info.distribution} {info.version or ''}".rstrip() if info.distribution else "")
            + f" failed and was skipped: {info.error}. Everything else keeps working;"
            f" PREC_DISABLED_PLUGINS={info.name} skips it without this warning.",
            info.exception,
        )

    def add(self, name: str, plugin: object, origin: Origin, module: str | None) -> None:
        info = PluginInfo(name, origin.distribution, origin.version, "ok", None, module)
        existing = self.manager.get_name(plugin)
        if existing is not None:
            reason = f"the same object is already loaded as plugin {existing!r}"
            self.registry.plugins[name] = PluginInfo(
                name, origin.distribution, origin.version, "disabled", None, module, reason
            )
            self.trace(f"plugin {name!r} skipped: {reason}")
            return
        self.manager.rejected.clear()
        try:
            self.manager.register(plugin, name=name)  # pluggy validates hook signatures against the specs
            if self.manager.rejected:
                self.manager.unregister(name=name)
                hook, rejected = next(iter(self.manager.rejected.items()))
                raise _verify.hookimpl_options_error(hook, rejected)
        except Exception as error:  # a broken plugin must not break prec
            self.fail(_broken(name, origin, module, error))
            return
        self.origins[name] = origin
        self.registry.plugins[name] = info

    def validate(self) -> dict[str, dict[str, Any]]:
        """Plugin name -> {hook name: implementation} for the plugins that pass; a plugin implementing an unknown
        hook, or defining a hook without the decorator, fails. One pass over all hooks (linear in plugins)."""
        impls: dict[str, dict[str, Any]] = {name: {} for name in self.origins}
        unknown: dict[str, list[str]] = {}
        for hook_name, caller in vars(self.manager.hook).items():
            for impl in caller.get_hookimpls():
                if caller.has_spec():
                    impls[impl.plugin_name][hook_name] = impl
                else:
                    unknown.setdefault(impl.plugin_name, []).append(hook_name)
        for name in list(impls):
            problem = hook_problem(self.manager.get_plugin(name), impls[name], unknown.get(name, []))
            if problem is not None:
                info = self.registry.plugins[name]
                self.manager.unregister(name=name)
                del impls[name], self.origins[name]
                self.fail(_broken(name, info.origin, info.module, problem))
        return impls

    def run_hooks(self) -> None:
        implementations = self.validate()
        for name, origin in list(self.origins.items()):
            staged: list[tuple[Callable[[Any], None], Any]] = []
            keys: list[tuple[str, str]] = []
            callbacks = self._register_callbacks(origin, staged, keys)
            started = time.perf_counter()
            try:
                for hook_name in HOOK_ORDER:
                    impl = implementations[name].get(hook_name)
                    if impl is not None:
                        self.trace(f"calling {hook_name} of plugin {name!r}")
                        offered = {"register": callbacks[hook_name]}
                        with self.running(name, f"running {hook_name} of"):
                            impl.function(**{arg: offered[arg] for arg in impl.argnames})
            except (Exception, SystemExit) as error:
                info = self.registry.plugins[name]
                self.fail(_broken(name, info.origin, info.module, error, f"{hook_name} raised ", tuple(keys)))
                continue
            self.trace(f"plugin {name!r}: hooks took {1e3 * (time.perf_counter() - started):.2f} ms")
            for add, entry in staged:
                add(entry)
            info = self.registry.plugins[name]
            self.registry.plugins[name] = PluginInfo(
                info.name, info.distribution, info.version, "ok", None, info.module, None, tuple(keys)
            )

    def _register_callbacks(
        self, origin: Origin, staged: list[tuple[Callable[[Any], None], Any]], keys: list[tuple[str, str]]
    ) -> dict[str, Any]:
        """Hook name -> the ``register`` callable its implementation receives; what a plugin registers is staged
        and reaches the registry only once every hook of the plugin has run."""

        def stage(kind: str, key: Any, add: Callable[[Any], None], entry: Any, priority: int) -> None:
            item = (kind, key_text(key))
            if item in keys:
                raise PluginError(f"registers {kind} {key_text(key)!r} twice")
            keys.append(item)
            staged.append((add, entry))
            self.trace(f"  {origin.plugin} registers {kind} {key_text(key)!r} (priority {priority})")

        return register_callables(self.registry, origin, stage)


def _broken(
    name: str,
    origin: Origin,
    module: str | None,
    error: BaseException,
    where: str = "",
    registered: tuple[tuple[str, str], ...] = (),
) -> PluginInfo:
    """The record of a broken plugin, keeping the exception itself (traceback and cause) next to its text."""
    text = where + _describe(error)
    return PluginInfo(name, origin.distribution, origin.version, "error", text, module, None, registered, error)


def _entry_points() -> list[EntryPointInfo]:
    """All ``prec`` entry points, scanned once per process (until :func:`reset_registry`), one per
    (distribution, name): a distribution found twice on ``sys.path`` counts once (the first, as for imports),
    two distributions sharing a name both count (pluggy's own loader would silently skip the second)."""
    global _scan
    with _lock:
        if _scan is None:
            _scan = scan_entry_points(ENTRY_POINT_GROUP)
        return _scan


def _build_registry(internal: Mapping[str, object]) -> Registry:
    started = time.perf_counter()
    loader = _Loader()
    core = Origin(CORE_PLUGIN, "prec-core", distribution_version("prec-core"))
    for name, plugin in internal.items():  # the caller's own plugins: registered like any other, always present
        loader.add(name, plugin, core, getattr(plugin, "__name__", None))
    for name, plugin in _explicit.items():
        loader.add(name, plugin, Origin(name), getattr(plugin, "__name__", None))
    if _env_flag("PREC_DISABLE_PLUGIN_AUTOLOAD"):
        loader.trace("PREC_DISABLE_PLUGIN_AUTOLOAD is set: no entry points loaded")
        loader.registry.autoload_disabled = True
    else:
        _load_entry_points(loader)
    loader.run_hooks()
    loader.registry.finalize()
    for conflict in loader.registry.conflicts.values():
        loader.problem(str(conflict))
    for (kind, key), (winner, losers) in loader.registry.overrides.items():
        loader.trace(f"{kind} {key!r}: {winner} overrides {', '.join(map(str, losers))} by priority")
    loader.trace(f"registry built in {1e3 * (time.perf_counter() - started):.1f} ms")
    return loader.registry


def _load_entry_points(loader: _Loader) -> None:
    only = _env_list("PREC_LOAD_PLUGINS")
    disabled = _env_list("PREC_DISABLED_PLUGINS") or set()
    points = _entry_points()
    counts: dict[str, int] = {}
    for point in points:
        counts[point.name] = counts.get(point.name, 0) + 1
    matched: set[str] = set()
    for point in points:
        dist = point.distribution
        # A name two distributions share is qualified by both, so neither silently hides the other.
        name = point.name if counts[point.name] == 1 else f"{dist}:{point.name}"
        if name in loader.registry.plugins:  # taken by a plugin registered in code
            name = f"{dist}:{point.name}"
        keys = {point.name.lower(), name.lower(), (dist or "").lower(), normalize_distribution(dist)}
        matched |= keys & ((only or set()) | disabled)
        reason = None
        if only is not None and not keys & only:
            reason = "not named in PREC_LOAD_PLUGINS"
        elif keys & disabled:
            reason = "named in PREC_DISABLED_PLUGINS"
        if reason is not None:
            loader.registry.plugins[name] = PluginInfo(name, dist, point.version, "disabled", None, point.value, reason)
            loader.trace(f"plugin {name!r} disabled: {reason}")
            continue
        loader.trace(f"loading plugin {name!r} from {dist} ({point.value})")
        started = time.perf_counter()
        origin = Origin(name, dist, point.version)
        try:
            with loader.running(name, "importing"):
                plugin = point.entry_point.load()
        except (Exception, SystemExit) as error:
            loader.fail(_broken(name, origin, point.value, error, "import failed: "))
            continue
        loader.trace(
            f"loaded plugin {name!r} from {dist} ({point.value}) in {1e3 * (time.perf_counter() - started):.2f} ms"
        )
        loader.add(name, plugin, origin, point.value)
    for variable, names in (("PREC_LOAD_PLUGINS", only or set()), ("PREC_DISABLED_PLUGINS", disabled)):
        unknown = sorted(names - matched)
        if unknown:
            installed = sorted({point.name for point in points} | {point.distribution or "" for point in points} - {""})
            loader.problem(
                f"{variable} names {', '.join(map(repr, unknown))}, which no installed prec plugin matches"
                f" (installed plugins and distributions: {readable_list(installed)})."
            )
