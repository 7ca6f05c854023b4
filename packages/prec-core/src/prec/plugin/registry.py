"""The registry of accelerators, precision × accelerator pairs and strategies, as plugins registered them.

Selecting a precision is a dictionary lookup here, never an if-chain. When the lookup fails, the registry
explains: what the accelerator supports, which of prec's own packages would add the pair, and which installed
plugin is broken, disabled or in conflict when that plugin may have been the one to provide it.

The conflict rule: for every key (an accelerator name, a precision × accelerator pair, a strategy name, an alias)
the registration with the highest ``priority`` wins. A tie at the top between two registrations is a
:class:`Conflict`: the key is unusable and selecting it raises an error naming both plugins. Load order never
decides. An alias never shadows a registered name: the name wins and the alias is dropped (reported as a conflict
that does not block anything). :meth:`Registry.finalize` applies the rule, written out in
``prec.plugin._conflict_rule``.
"""

from __future__ import annotations

import difflib
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prec._warnings import warn
from prec.errors import (
    AcceleratorUnavailableError,
    ConfigurationError,
    PluginError,
    PrecWarning,
    UnknownAcceleratorError,
    UnknownPrecisionError,
    UnknownStrategyError,
    UnsupportedPrecisionError,
)
from prec.hookspecs import RegisterAccelerator, RegisterPrecision, RegisterStrategy
from prec.names import AUTO, CANONICAL_PRECISIONS, normalize_precision, readable_list
from prec.plugin import catalogue
from prec.plugin._conflict_rule import override_message, resolve
from prec.plugin._explain import Explanations
from prec.plugin.catalogue import KNOWN_GAPS
from prec.plugin.entries import (
    ACCELERATOR,
    ACCELERATOR_ALIAS,
    PRECISION,
    PRECISION_ALIAS,
    STRATEGY,
    AcceleratorEntry,
    Conflict,
    Origin,
    PluginInfo,
    PrecisionEntry,
    PrecisionFactory,
    StrategyEntry,
    StrategyFactory,
    key_text,
    normalize_distribution,
)

if TYPE_CHECKING:
    from prec.accelerator import Accelerator
    from prec.precision import Precision

__all__ = [
    "ACCELERATOR",
    "ACCELERATOR_ALIAS",
    "KNOWN_GAPS",
    "PRECISION",
    "PRECISION_ALIAS",
    "STRATEGY",
    "AcceleratorEntry",
    "Conflict",
    "Origin",
    "PluginInfo",
    "PrecisionEntry",
    "PrecisionFactory",
    "RegisterAccelerator",
    "RegisterPrecision",
    "RegisterStrategy",
    "Registry",
    "StrategyEntry",
    "StrategyFactory",
    "key_text",
    "normalize_distribution",
]


@dataclass
class Registry(Explanations):
    """Everything the installed plugins registered. Built by :func:`prec.plugin.manager.get_registry`."""

    accelerators: dict[str, AcceleratorEntry] = field(default_factory=dict)
    precisions: dict[tuple[str, str], PrecisionEntry] = field(default_factory=dict)
    strategies: dict[str, StrategyEntry] = field(default_factory=dict)
    #: (kind, key text) -> the tie that makes the key unusable (or an alias that was dropped).
    conflicts: dict[tuple[str, str], Conflict] = field(default_factory=dict)
    #: (kind, key text) -> (winner, losers): keys a higher ``priority`` took over from other plugins.
    overrides: dict[tuple[str, str], tuple[Origin, tuple[Origin, ...]]] = field(default_factory=dict)
    #: Plugin name -> PluginInfo, including broken and disabled plugins (filled by the plugin loader).
    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    #: Set by the plugin loader under PREC_DISABLE_PLUGIN_AUTOLOAD=1, so errors can say why nothing loaded.
    autoload_disabled: bool = False
    _aliases: dict[str, str] = field(default_factory=dict)
    _precision_aliases: dict[str, str] = field(default_factory=dict)
    _instances: dict[str, Accelerator] = field(default_factory=dict)
    _candidates: dict[tuple[str, Any], list[Any]] = field(default_factory=dict)
    _provenance: weakref.WeakKeyDictionary[Any, Origin] = field(default_factory=weakref.WeakKeyDictionary)

    # -- adding ---------------------------------------------------------------------------------------------
    def add_accelerator(self, entry: AcceleratorEntry) -> None:
        self._candidates.setdefault((ACCELERATOR, entry.name), []).append(entry)

    def add_precision(self, entry: PrecisionEntry) -> None:
        self._candidates.setdefault((PRECISION, (entry.name, entry.accelerator)), []).append(entry)

    def add_strategy(self, entry: StrategyEntry) -> None:
        self._candidates.setdefault((STRATEGY, entry.name), []).append(entry)

    def alias_target(self, name: str) -> str | None:
        """The accelerator ``name`` is a first-party alias of (``gpu`` -> ``cuda``), unless a plugin registered an
        accelerator of that name: a precision registered on such an alias would never match, so registration
        refuses it. Aliases that plugins declare are known only once every plugin has loaded; a pair on one of
        those is dropped, with a warning, by :meth:`finalize`."""
        name = name.lower()
        if (ACCELERATOR, name) in self._candidates:
            return None
        return catalogue.ACCELERATOR_ALIASES.get(name)

    def finalize(self) -> None:
        """Apply the conflict rule once everything is registered (see the module docstring)."""
        resolution = resolve(self._candidates)
        tables: tuple[tuple[dict[Any, Any], dict[Any, Any]], ...] = (
            (self.accelerators, resolution.accelerators),
            (self.precisions, resolution.precisions),
            (self.strategies, resolution.strategies),
            (self.conflicts, resolution.conflicts),
            (self.overrides, resolution.overrides),
        )
        for table, resolved in tables:
            table.clear()
            table.update(resolved)
        self._aliases = resolution.accelerator_aliases
        self._precision_aliases = resolution.precision_aliases
        self._instances.clear()

    def _blocking_conflict(self, kind: str, key: Any) -> Conflict | None:
        conflict = self.conflicts.get((kind, key_text(key)))
        return conflict if conflict is not None and conflict.blocking else None

    # -- accelerators ---------------------------------------------------------------------------------------
    def canonical_accelerator(self, name: str) -> str:
        """Resolve an alias (``gpu``, ``tpu``) to the accelerator's registered name."""
        name = name.strip().lower()
        conflict = self._blocking_conflict(ACCELERATOR_ALIAS, name)
        if conflict is not None:
            raise UnknownAcceleratorError(str(conflict))
        return self._aliases.get(name) or catalogue.ACCELERATOR_ALIASES.get(name, name)

    def select_accelerator(self, accelerator: Any) -> Accelerator:
        """The front door for an ``accelerator=`` argument: an instance is used as given; a name (any case, an
        alias, or ``"auto"``) must be installed and available here."""
        from prec.accelerator import Accelerator

        if isinstance(accelerator, Accelerator):
            return accelerator
        if not isinstance(accelerator, str) or not accelerator.strip():
            raise ConfigurationError(
                f"accelerator={accelerator!r} must be an accelerator name such as 'auto', 'cpu', 'cuda' or 'gpu'"
                f" (installed: {readable_list(sorted(self.accelerators))}), or a prec.Accelerator."
            )
        return self.available_accelerator(accelerator)

    def accelerator(self, name: str) -> Accelerator:
        """The accelerator instance for ``name`` or an alias (any case); ``"auto"`` picks the best available."""
        if name.strip().lower() == AUTO:
            return self.auto_accelerator()
        canonical = self.canonical_accelerator(name)
        conflict = self._blocking_conflict(ACCELERATOR, canonical)
        if conflict is not None:
            raise UnknownAcceleratorError(str(conflict))
        entry = self.accelerators.get(canonical)
        if entry is None:
            raise UnknownAcceleratorError(self._missing_accelerator_message(name, canonical))
        if canonical not in self._instances:
            try:
                self._instances[canonical] = entry.cls()
            except (Exception, SystemExit) as error:
                raise PluginError(
                    f"accelerator {canonical!r} of {entry.origin} failed to initialise: {type(error).__name__}: {error}"
                ) from error
        return self._instances[canonical]

    def available_accelerator(self, name: str) -> Accelerator:
        """Like :meth:`accelerator`, but raise :class:`AcceleratorUnavailableError` when it cannot run here."""
        accelerator = self.accelerator(name)
        self.announce_override(ACCELERATOR, accelerator.name)
        availability = accelerator.availability()
        if not availability:
            hint = f" {accelerator.install_hint}" if accelerator.install_hint else ""
            raise AcceleratorUnavailableError(
                f"accelerator={name!r} is installed but not available here: {availability.reason}.{hint}"
            )
        return accelerator

    def auto_accelerator(self) -> Accelerator:
        ranked = sorted(self.accelerators.values(), key=lambda entry: -entry.cls.auto_priority)
        for entry in ranked:
            accelerator = self.accelerator(entry.name)
            if accelerator.availability():
                self.announce_override(ACCELERATOR, accelerator.name)
                return accelerator
        raise UnknownAcceleratorError(
            "accelerator='auto' found no available accelerator."
            + (f" Installed: {readable_list(sorted(self.accelerators))}." if self.accelerators else "")
            + " Install one, e.g. `pip install prec-cpu`."
            + self.plugin_note(ACCELERATOR, lambda item: item[0] == ACCELERATOR)
        )

    # -- precisions -----------------------------------------------------------------------------------------
    def precision_names(self) -> list[str]:
        """Every precision name known here: the canonical ones plus those plugins registered (in conflict too, so
        selecting one explains the conflict), with aliases."""
        registered = {key[0] for kind, key in self._candidates if kind == PRECISION}
        return sorted(set(CANONICAL_PRECISIONS) | registered | set(self._precision_aliases))

    def normalize(self, value: Any) -> str:
        """Canonical name for a precision value (legacy spellings and plugin aliases resolved)."""
        if isinstance(value, str):
            conflict = self._blocking_conflict(PRECISION_ALIAS, value)
            if conflict is not None:
                raise UnknownPrecisionError(str(conflict))
        try:
            # A first-party name whose package is missing is known: the lookup then says what to install.
            name = normalize_precision(value, [*self.precision_names(), *catalogue.PRECISION_PACKAGES])
        except UnknownPrecisionError as error:
            note = self.plugin_note(PRECISION, lambda item: item[0] == PRECISION and item[1].split("@")[0] == value)
            if note:
                raise UnknownPrecisionError(f"{error}{note}") from None
            raise
        return self._precision_aliases.get(name, name)

    def supported_precisions(self, accelerator: str) -> list[str]:
        """Precision names registered on ``accelerator``, sorted by name."""
        accelerator = self.canonical_accelerator(accelerator)
        return sorted(name for name, acc in self.precisions if acc == accelerator)

    def matrix(self) -> dict[str, list[str]]:
        """Precision name (canonical order) -> accelerator names that support it (the table ``prec list``
        prints)."""
        table: dict[str, list[str]] = {}
        for name, accelerator in sorted(self.precisions, key=lambda pair: (precision_order(pair[0]), pair[1])):
            table.setdefault(name, []).append(accelerator)
        return table

    def precision_entry(self, name: str, accelerator: str) -> PrecisionEntry:
        """Look up the pair, or raise :class:`UnsupportedPrecisionError` that explains what to do instead.

        A registered pair always wins over a :data:`KNOWN_GAPS` note: the gap only explains a failed lookup."""
        accelerator = self.canonical_accelerator(accelerator)
        key = (name, accelerator)
        entry = self.precisions.get(key)
        if entry is not None:
            return entry
        conflict = self._blocking_conflict(PRECISION, key)
        if conflict is not None:
            raise UnsupportedPrecisionError(str(conflict))
        raise UnsupportedPrecisionError(self._unsupported_message(name, accelerator))

    def select_precision(
        self, precision: Any, accelerator: Accelerator, options: Mapping[str, Any] | None = None
    ) -> tuple[Precision, str | None]:
        """The one front door of precision selection (the Trainer and :func:`prec.get_precision`): normalise the
        name once, resolve ``"auto"`` with the accelerator, build the pair's precision and verify it.

        Returns the precision and, for ``"auto"``, why the accelerator chose it (``None`` otherwise)."""
        if options is None:
            options = {}
        if not isinstance(options, Mapping) or not all(isinstance(key, str) for key in options):
            raise ConfigurationError(f"precision_options={options!r} must be a dict of option names to values.")
        name, reason = self.normalize(precision), None
        if name == AUTO:
            name, reason = accelerator.auto_precision()
        if "plan" in options:  # a measured plan (prec plan) becomes the options it decides, for the resolved name
            from prec.numerics.plan import expand_plan_option

            options = expand_plan_option(name, options)
        return self._build_precision(self.precision_entry(name, accelerator.name), accelerator, options), reason

    def create_precision(self, value: Any, accelerator: Accelerator, **options: Any) -> Precision:
        """Build the precision for ``value`` on ``accelerator`` (:meth:`select_precision` without the reason)."""
        return self.select_precision(value, accelerator, options)[0]

    def provenance(self, precision: Precision) -> Origin | None:
        """Which plugin, distribution and version built ``precision`` (``None``: not built by this registry,
        e.g. passed in ``plugins=``)."""
        try:
            return self._provenance.get(precision)
        except TypeError:  # an unhashable subclass
            return None

    def describe(self, precision: Precision) -> str:
        """One line for the start of a run: the precision in use and who provides it."""
        origin = self.provenance(precision)
        where = f"built by {origin}" if origin is not None else "passed in as an instance"
        return f"precision {precision.name!r} ({type(precision).__name__}), {where}"

    def _build_precision(self, entry: PrecisionEntry, accelerator: Accelerator, options: Mapping[str, Any]) -> Any:
        """Call the factory; any failure but a configuration error is the plugin's, and so is a wrong result."""
        from prec.precision import Precision

        self.announce_override(PRECISION, (entry.name, entry.accelerator))
        where = f"the factory of precision {entry.name!r} on {entry.accelerator!r} of {entry.origin}"
        if options and not entry.takes_options:
            raise ConfigurationError(
                f"precision_options={dict(options)!r}: precision {entry.name!r} on {entry.accelerator!r}"
                f" ({entry.origin}) takes no options."
            )
        try:
            result = entry.factory(accelerator, **options)
        except ConfigurationError:
            raise
        except (Exception, SystemExit) as error:
            raise PluginError(f"{where} raised {type(error).__name__}: {error}") from error
        if not isinstance(result, Precision):
            raise PluginError(f"{where} returned {result!r}, not a prec.Precision.")
        if result.name != entry.name:
            raise PluginError(f"{where} returned a precision named {result.name!r}; it must be {entry.name!r}.")
        expected = accelerator.device_type or accelerator.name
        if result.device_type is not None and result.device_type != expected:
            raise PluginError(
                f"{where} returned a precision for device type {result.device_type!r};"
                f" the accelerator has {expected!r}."
            )
        try:
            self._provenance[result] = entry.origin
        except TypeError:  # an unhashable subclass: no provenance, nothing else lost
            pass
        return result

    def announce_override(self, kind: str, key: Any) -> None:
        """Warn when ``key`` is served by a plugin that took it over from others by priority: deliberate, but
        never silent (a plugin replacing ``32-true`` changes what every user of that name trains with)."""
        override = self.overrides.get((kind, key_text(key)))
        if override is not None:
            warn(override_message(kind, key, *override), PrecWarning)

    # -- strategies -----------------------------------------------------------------------------------------
    def strategy_entry(self, name: str) -> StrategyEntry:
        conflict = self._blocking_conflict(STRATEGY, name)
        if conflict is not None:
            raise UnknownStrategyError(str(conflict))
        entry = self.strategies.get(name)
        if entry is None:
            available = readable_list(sorted(self.strategies))
            match = difflib.get_close_matches(name, list(self.strategies), n=1, cutoff=0.6)
            hint = f" Did you mean {match[0]!r}?" if match else ""
            note = self.plugin_note(STRATEGY, lambda item: item == (STRATEGY, name))
            raise UnknownStrategyError(f"strategy={name!r} is not registered. Available: {available}.{hint}{note}")
        return entry

    def check_strategy(self, entry: StrategyEntry, accelerator: str, precision: str) -> None:
        if entry.accelerators is not None and accelerator not in entry.accelerators:
            raise ConfigurationError(
                f"strategy={entry.name!r} does not run on accelerator {accelerator!r};"
                f" it supports: {readable_list(sorted(entry.accelerators))}."
            )
        if entry.precisions is not None and precision not in entry.precisions:
            raise ConfigurationError(
                f"strategy={entry.name!r} does not support precision {precision!r};"
                f" it supports: {readable_list(sorted(entry.precisions))}."
            )


def precision_order(name: str) -> tuple[int, str]:
    """Sort key: :data:`~prec.names.CANONICAL_PRECISIONS` in their order, then other names alphabetically."""
    if name in CANONICAL_PRECISIONS:
        return CANONICAL_PRECISIONS.index(name), ""
    return len(CANONICAL_PRECISIONS), name
