"""What the registry holds: entries as plugins registered them, where each came from, and conflicts."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prec.accelerator import Accelerator
    from prec.precision import Precision
    from prec.strategies.base import Strategy

PrecisionFactory = Callable[..., "Precision"]
StrategyFactory = Callable[..., "Strategy"]

# The kinds of key the registry resolves conflicts for.
ACCELERATOR, PRECISION, STRATEGY = "accelerator", "precision", "strategy"
ACCELERATOR_ALIAS, PRECISION_ALIAS = "accelerator alias", "precision alias"


def normalize_distribution(name: str | None) -> str:
    """PEP 503 form of a distribution name (``Prec_CPU`` and ``prec-cpu`` are one distribution)."""
    return re.sub(r"[-_.]+", "-", name or "").lower()


@dataclass(frozen=True)
class Origin:
    """Which plugin (and installed distribution) registered an entry."""

    plugin: str
    distribution: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        if self.distribution is None:
            return f"plugin {self.plugin!r} (registered in code)"
        return f"plugin {self.plugin!r} from {self.distribution}" + (f" {self.version}" if self.version else "")


@dataclass(frozen=True)
class PluginInfo:
    """One plugin as the registry records it (and ``prec list`` reports it), broken and disabled ones too."""

    name: str
    distribution: str | None
    version: str | None
    status: str  # "ok", "error" or "disabled"
    error: str | None = None
    module: str | None = None
    #: Why a plugin is disabled (which environment variable, or that the same object was registered in code).
    reason: str | None = None
    #: ``(kind, key)`` of every registration; for a broken plugin, what it registered before failing (discarded,
    #: but kept so a failed lookup can say that this plugin would have provided it).
    registered: tuple[tuple[str, str], ...] = ()
    #: The exception that broke the plugin (its traceback and ``__cause__`` intact), for status "error".
    exception: BaseException | None = field(default=None, compare=False, repr=False)

    @property
    def origin(self) -> Origin:
        return Origin(self.name, self.distribution, self.version)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "status": self.status,
            "error": self.error,
            "module": self.module,
            "reason": self.reason,
        }


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
    #: Whether the factory accepts ``**options`` (checked at registration).
    takes_options: bool = True


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
    """Two plugins registered one key at the same, highest priority: the key is unusable until one yields.

    With ``shadowed`` set it is an alias that equals a registered name: the name wins, nothing is blocked.
    """

    kind: str
    key: str
    origins: tuple[Origin, ...]
    priority: int = 0
    shadowed: str | None = None
    #: A sentence that replaces the generated one (for an entry dropped for another reason than a tie).
    message: str | None = None

    @property
    def blocking(self) -> bool:
        return self.shadowed is None and self.message is None

    def __str__(self) -> str:
        if self.message is not None:
            return self.message
        if self.shadowed is not None:
            return f"{self.kind} {self.key} of {self.origins[0]} is ignored: it is {self.shadowed}, which wins."
        who = " and ".join(str(origin) for origin in self.origins)
        uninstall = [origin.distribution for origin in self.origins if origin.distribution]
        how = f" (pip uninstall {uninstall[-1]})" if uninstall else ""
        return (
            f"{self.kind} {self.key} is registered by both {who} at priority {self.priority}; prec never picks one"
            f" by load order, so it cannot be used until one yields. Uninstall one{how}, disable one"
            f" (PREC_DISABLED_PLUGINS={self.origins[-1].plugin}), or have the one that should win register it"
            f" with priority={self.priority + 1}."
        )


def key_text(key: Any) -> str:
    """``("16-mixed", "cpu")`` -> ``"16-mixed@cpu"``: the text form of a registry key."""
    return "@".join(key) if isinstance(key, tuple) else str(key)


def sorted_origins(origins: Iterable[Origin]) -> tuple[Origin, ...]:
    """Origins in a stable order (by distribution, then plugin name), so messages never depend on load order."""
    return tuple(sorted(origins, key=lambda origin: (origin.distribution or "", origin.plugin)))


def label(kind: str, key: Any) -> str:
    return f"{key[0]!r} on {key[1]!r}" if kind == PRECISION else repr(key)
