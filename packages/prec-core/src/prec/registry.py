"""The registry of accelerators, precision × accelerator pairs and strategies, as plugins registered them.

Selecting a precision is a dictionary lookup here, never an if-chain. When the lookup fails, the registry
explains: what the accelerator supports, which of prec's own packages would add the pair, and which installed
plugin is broken or in conflict when that plugin may have been the one to provide it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from prec.errors import (
    AcceleratorUnavailableError,
    ConfigurationError,
    UnknownAcceleratorError,
    UnknownStrategyError,
    UnsupportedPrecisionError,
)
from prec.names import CANONICAL_PRECISIONS, normalize_precision

if TYPE_CHECKING:
    from prec.accelerator import Accelerator
    from prec.precision import Precision
    from prec.strategy import Strategy

PrecisionFactory = Callable[..., "Precision"]
StrategyFactory = Callable[..., "Strategy"]

# Which of prec's own distributions provides what, so an error can say what to install.
BUILTIN_ACCELERATOR_PACKAGES: dict[str, str] = {"cpu": "prec-cpu", "cuda": "prec-cuda", "xla": "prec-xla"}
BUILTIN_ACCELERATOR_ALIASES: dict[str, str] = {"gpu": "cuda", "tpu": "xla"}
BUILTIN_PAIR_PACKAGES: dict[tuple[str, str], str] = {
    **{(name, "cpu"): "prec-cpu" for name in ("bf16-mixed", "16-true", "bf16-true", "32-true")},
    **{(name, "cuda"): "prec-cuda" for name in ("16-mixed", "bf16-mixed", "16-true", "bf16-true", "32-true")},
    **{(name, "xla"): "prec-xla" for name in ("bf16-mixed", "16-true", "bf16-true", "32-true")},
    ("64-true", "cpu"): "prec-double",
    ("64-true", "cuda"): "prec-double",
}
# Pairs the support table rules out, with the reason and what to use instead.
KNOWN_GAPS: dict[tuple[str, str], str] = {
    ("16-mixed", "cpu"): "16-mixed needs a GPU: CPU fp16 autocast is slow and needs loss scaling."
    " Use precision='bf16-mixed' on CPU",
    ("16-mixed", "xla"): "TPUs compute in bfloat16, not float16. Use precision='bf16-mixed'",
    ("64-true", "xla"): "TPUs have no float64 arithmetic. Use precision='32-true'",
    ("64-true", "mps"): "Apple MPS devices have no float64 arithmetic. Use precision='32-true' or the cpu accelerator",
}


class RegisterAccelerator(Protocol):
    def __call__(self, accelerator: type[Accelerator], *, priority: int = 0) -> None: ...


class RegisterPrecision(Protocol):
    def __call__(
        self,
        name: str,
        accelerator: str,
        factory: PrecisionFactory,
        *,
        aliases: Iterable[str] = (),
        priority: int = 0,
        description: str = "",
    ) -> None: ...


class RegisterStrategy(Protocol):
    def __call__(
        self,
        name: str,
        factory: StrategyFactory,
        *,
        accelerators: Iterable[str] | None = None,
        precisions: Iterable[str] | None = None,
        priority: int = 0,
        description: str = "",
    ) -> None: ...


@dataclass(frozen=True)
class Origin:
    """Which plugin (and installed distribution) registered an entry."""

    plugin: str
    distribution: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        return f"plugin {self.plugin!r}" + (f" from {self.distribution}" if self.distribution else "")


@dataclass(frozen=True)
class AcceleratorEntry:
    name: str
    cls: type[Accelerator]
    aliases: tuple[str, ...]
    origin: Origin
    priority: int = 0


@dataclass(frozen=True)
class PrecisionEntry:
    name: str
    accelerator: str
    factory: PrecisionFactory
    origin: Origin
    aliases: tuple[str, ...] = ()
    priority: int = 0
    description: str = ""


@dataclass(frozen=True)
class StrategyEntry:
    name: str
    factory: StrategyFactory
    origin: Origin
    accelerators: frozenset[str] | None = None
    precisions: frozenset[str] | None = None
    priority: int = 0
    description: str = ""


@dataclass(frozen=True)
class Conflict:
    """Two plugins registered the same key at the same priority: the key is unusable until one yields."""

    kind: str
    key: str
    origins: tuple[Origin, ...]

    def __str__(self) -> str:
        who = " and ".join(str(origin) for origin in self.origins)
        return (
            f"{self.kind} {self.key} is registered by both {who} at the same priority; prec never picks one by"
            " load order. Uninstall one, disable one with PREC_DISABLED_PLUGINS, or register with a higher priority."
        )


def _key_text(key: Any) -> str:
    return "@".join(key) if isinstance(key, tuple) else str(key)


@dataclass
class Registry:
    """Everything the installed plugins registered. Built by :func:`prec.plugins.get_registry`."""

    accelerators: dict[str, AcceleratorEntry] = field(default_factory=dict)
    precisions: dict[tuple[str, str], PrecisionEntry] = field(default_factory=dict)
    strategies: dict[str, StrategyEntry] = field(default_factory=dict)
    conflicts: dict[tuple[str, str], Conflict] = field(default_factory=dict)
    #: Set by the plugin manager: name -> PluginInfo, including broken and disabled plugins.
    plugins: dict[str, Any] = field(default_factory=dict)
    _aliases: dict[str, str] = field(default_factory=dict)
    _precision_aliases: dict[str, str] = field(default_factory=dict)
    _instances: dict[str, Accelerator] = field(default_factory=dict)
    _candidates: dict[tuple[str, Any], list[Any]] = field(default_factory=dict)

    # -- adding ---------------------------------------------------------------------------------------------
    def add_accelerator(self, entry: AcceleratorEntry) -> None:
        self._candidates.setdefault(("accelerator", entry.name), []).append(entry)

    def add_precision(self, entry: PrecisionEntry) -> None:
        self._candidates.setdefault(("precision", (entry.name, entry.accelerator)), []).append(entry)

    def add_strategy(self, entry: StrategyEntry) -> None:
        self._candidates.setdefault(("strategy", entry.name), []).append(entry)

    def finalize(self) -> None:
        """Apply the conflict rule once everything is registered: the highest priority wins; a tie between
        two or more plugins at the top is a :class:`Conflict` and the key stays unusable (never load order)."""
        tables: dict[str, dict[Any, Any]] = {
            "accelerator": self.accelerators,
            "precision": self.precisions,
            "strategy": self.strategies,
        }
        for table in tables.values():
            table.clear()
        self.conflicts.clear()
        for (kind, key), entries in self._candidates.items():
            top = max(entry.priority for entry in entries)
            winners = [entry for entry in entries if entry.priority == top]
            if len(winners) == 1:
                tables[kind][key] = winners[0]
            else:
                label = f"{key[0]!r} on {key[1]!r}" if kind == "precision" else repr(key)
                self.conflicts[(kind, _key_text(key))] = Conflict(kind, label, tuple(e.origin for e in winners))
        self._aliases = {alias: name for name, acc in self.accelerators.items() for alias in acc.aliases}
        self._precision_aliases = {alias: entry.name for entry in self.precisions.values() for alias in entry.aliases}
        self._instances.clear()

    # -- accelerators ---------------------------------------------------------------------------------------
    def canonical_accelerator(self, name: str) -> str:
        """Resolve an alias (``gpu``, ``tpu``) to the accelerator's registered name."""
        name = name.lower()
        return self._aliases.get(name) or BUILTIN_ACCELERATOR_ALIASES.get(name, name)

    def accelerator(self, name: str) -> Accelerator:
        """The accelerator instance for ``name`` or an alias; ``"auto"`` picks the best available one."""
        if name == "auto":
            return self.auto_accelerator()
        canonical = self.canonical_accelerator(name)
        if ("accelerator", canonical) in self.conflicts:
            raise UnknownAcceleratorError(str(self.conflicts[("accelerator", canonical)]))
        entry = self.accelerators.get(canonical)
        if entry is None:
            raise UnknownAcceleratorError(self._missing_accelerator_message(name, canonical))
        if canonical not in self._instances:
            self._instances[canonical] = entry.cls()
        return self._instances[canonical]

    def available_accelerator(self, name: str) -> Accelerator:
        """Like :meth:`accelerator`, but raise :class:`AcceleratorUnavailableError` when it cannot run here."""
        accelerator = self.accelerator(name)
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
                return accelerator
        raise UnknownAcceleratorError(
            "accelerator='auto' found no available accelerator."
            + (f" Installed: {', '.join(sorted(self.accelerators))}." if self.accelerators else "")
            + " Install one, e.g. `pip install prec-cpu`."
            + self._broken_plugins_note()
        )

    def _missing_accelerator_message(self, name: str, canonical: str) -> str:
        installed = sorted(self.accelerators)
        message = f"accelerator={name!r} is not installed. Installed accelerators: {', '.join(installed) or 'none'}."
        package = BUILTIN_ACCELERATOR_PACKAGES.get(canonical)
        if package:
            message += f" `pip install {package}` adds it."
        else:
            candidates = installed + list(self._aliases) + ["auto"]
            match = difflib.get_close_matches(name.lower(), candidates, n=1, cutoff=0.6)
            if match:
                message += f" Did you mean {match[0]!r}?"
        return message + self._broken_plugins_note()

    # -- precisions -----------------------------------------------------------------------------------------
    def precision_names(self) -> list[str]:
        """Every precision name known here: the canonical ones plus those plugins registered, with aliases."""
        registered = {name for name, _ in self.precisions}
        return sorted(set(CANONICAL_PRECISIONS) | registered | set(self._precision_aliases))

    def normalize(self, value: Any) -> str:
        """Canonical name for a precision value (legacy spellings and plugin aliases resolved)."""
        name = normalize_precision(value, self.precision_names())
        return self._precision_aliases.get(name, name)

    def supported_precisions(self, accelerator: str) -> list[str]:
        accelerator = self.canonical_accelerator(accelerator)
        return sorted(name for name, acc in self.precisions if acc == accelerator)

    def matrix(self) -> dict[str, list[str]]:
        """Precision name -> accelerator names that support it (the table ``prec list`` prints)."""
        table: dict[str, list[str]] = {}
        for name, accelerator in sorted(self.precisions):
            table.setdefault(name, []).append(accelerator)
        return table

    def precision_entry(self, name: str, accelerator: str) -> PrecisionEntry:
        """Look up the pair, or raise :class:`UnsupportedPrecisionError` that explains what to do instead."""
        accelerator = self.canonical_accelerator(accelerator)
        key = (name, accelerator)
        entry = self.precisions.get(key)
        if entry is not None:
            return entry
        conflict = self.conflicts.get(("precision", _key_text(key)))
        if conflict is not None:
            raise UnsupportedPrecisionError(str(conflict))
        raise UnsupportedPrecisionError(self._unsupported_message(name, accelerator))

    def create_precision(self, value: Any, accelerator: Accelerator, **options: Any) -> Precision:
        """Build the precision plugin for ``value`` on ``accelerator`` (the Trainer's selection step)."""
        name = self.normalize(value)
        entry = self.precision_entry(name, accelerator.name)
        return entry.factory(accelerator, **options)

    def _unsupported_message(self, name: str, accelerator: str) -> str:
        supported = self.supported_precisions(accelerator)
        message = f"precision={name!r} is not supported on accelerator {accelerator!r}."
        gap = KNOWN_GAPS.get((name, accelerator))
        if gap:
            message += f" {gap}."
        package = BUILTIN_PAIR_PACKAGES.get((name, accelerator))
        if package:
            message += f" `pip install {package}` adds it."
        elsewhere = sorted(acc for n, acc in self.precisions if n == name)
        if elsewhere and not gap:
            message += f" {name} is available on: {', '.join(elsewhere)}."
        message += f" Supported on {accelerator}: {', '.join(supported) or 'nothing installed'}."
        return message + self._broken_plugins_note()

    # -- strategies -----------------------------------------------------------------------------------------
    def strategy_entry(self, name: str) -> StrategyEntry:
        if ("strategy", name) in self.conflicts:
            raise UnknownStrategyError(str(self.conflicts[("strategy", name)]))
        entry = self.strategies.get(name)
        if entry is None:
            available = ", ".join(sorted(self.strategies)) or "none"
            match = difflib.get_close_matches(name, list(self.strategies), n=1, cutoff=0.6)
            hint = f" Did you mean {match[0]!r}?" if match else ""
            raise UnknownStrategyError(f"strategy={name!r} is not registered. Available: {available}.{hint}")
        return entry

    def check_strategy(self, entry: StrategyEntry, accelerator: str, precision: str) -> None:
        if entry.accelerators is not None and accelerator not in entry.accelerators:
            raise ConfigurationError(
                f"strategy={entry.name!r} does not run on accelerator {accelerator!r};"
                f" it supports: {', '.join(sorted(entry.accelerators))}."
            )
        if entry.precisions is not None and precision not in entry.precisions:
            raise ConfigurationError(
                f"strategy={entry.name!r} does not support precision {precision!r};"
                f" it supports: {', '.join(sorted(entry.precisions))}."
            )

    # -- diagnostics ----------------------------------------------------------------------------------------
    def _broken_plugins_note(self) -> str:
        broken = [info for info in self.plugins.values() if getattr(info, "status", "ok") == "error"]
        if not broken:
            return ""
        parts = [f"{info.name!r} ({info.distribution or 'registered in code'}): {info.error}" for info in broken]
        return " Note: these plugins failed to load and may have provided it: " + "; ".join(parts)
