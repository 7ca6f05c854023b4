"""The conflict rule of :mod:`prec.plugin.registry`, applied once every plugin has registered.

For every key the registration with the highest ``priority`` wins; a tie at the top is a :class:`Conflict` that
makes the key unusable; an alias never shadows a registered name, and a precision registered on what turned out
to be an accelerator alias is dropped. Pure functions of the registrations, so the rule reads in one place, apart
from the lookups the :class:`~prec.plugin.registry.Registry` serves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prec.names import AUTO, CANONICAL_PRECISIONS, legacy_names
from prec.plugin.entries import (
    ACCELERATOR,
    ACCELERATOR_ALIAS,
    PRECISION,
    PRECISION_ALIAS,
    STRATEGY,
    AcceleratorEntry,
    Conflict,
    Origin,
    PrecisionEntry,
    StrategyEntry,
    key_text,
    label,
    sorted_origins,
)

__all__ = ["Resolution", "override_message", "resolve"]

_RESERVED_PRECISION_NAMES = frozenset({AUTO, *CANONICAL_PRECISIONS, *(key.strip("'") for key in legacy_names())})


@dataclass
class Resolution:
    """What the rule leaves usable, and why the rest is not."""

    accelerators: dict[str, AcceleratorEntry]
    precisions: dict[tuple[str, str], PrecisionEntry]
    strategies: dict[str, StrategyEntry]
    #: (kind, key text) -> the tie that makes the key unusable (or an alias or pair that was dropped).
    conflicts: dict[tuple[str, str], Conflict]
    #: (kind, key text) -> (winner, losers): keys a higher ``priority`` took over from other plugins.
    overrides: dict[tuple[str, str], tuple[Origin, tuple[Origin, ...]]]
    #: Accelerator alias -> accelerator name.
    accelerator_aliases: dict[str, str]
    #: Precision alias -> precision name.
    precision_aliases: dict[str, str]


def resolve(candidates: Mapping[tuple[str, Any], list[Any]]) -> Resolution:
    """Apply the rule to every registration: ``candidates`` maps (kind, key) to the entries registered for it."""
    tables: dict[str, dict[Any, Any]] = {ACCELERATOR: {}, PRECISION: {}, STRATEGY: {}}
    conflicts: dict[tuple[str, str], Conflict] = {}
    overrides: dict[tuple[str, str], tuple[Origin, tuple[Origin, ...]]] = {}
    for (kind, key), entries in candidates.items():
        top = max(entry.priority for entry in entries)
        winners = [entry for entry in entries if entry.priority == top]
        if len(winners) == 1:
            tables[kind][key] = winners[0]
            losers = tuple(entry.origin for entry in entries if entry is not winners[0])
            if losers:
                overrides[(kind, key_text(key))] = (winners[0].origin, losers)
        else:
            origins = sorted_origins(entry.origin for entry in winners)
            conflicts[(kind, key_text(key))] = Conflict(kind, label(kind, key), origins, top)
    accelerators, precisions = tables[ACCELERATOR], tables[PRECISION]
    accelerator_claims = [
        (alias.lower(), name, entry.origin, entry.priority)
        for name, entry in accelerators.items()
        for alias in entry.aliases
    ]
    accelerator_aliases = _resolve_aliases(ACCELERATOR_ALIAS, accelerator_claims, {AUTO, *accelerators}, conflicts)
    precision_claims = [
        (alias, entry.name, entry.origin, entry.priority) for entry in precisions.values() for alias in entry.aliases
    ]
    reserved = _RESERVED_PRECISION_NAMES | {name for name, _ in precisions}
    precision_aliases = _resolve_aliases(PRECISION_ALIAS, precision_claims, reserved, conflicts)
    _drop_pairs_on_aliases(precisions, accelerators, accelerator_aliases, conflicts)
    return Resolution(
        accelerators, precisions, tables[STRATEGY], conflicts, overrides, accelerator_aliases, precision_aliases
    )


def _drop_pairs_on_aliases(
    precisions: dict[tuple[str, str], PrecisionEntry],
    accelerators: Mapping[str, AcceleratorEntry],
    aliases: Mapping[str, str],
    conflicts: dict[tuple[str, str], Conflict],
) -> None:
    """A pair registered on what turned out to be another plugin's accelerator alias never matches: drop it
    and say so (a registration on an alias known at the time is refused outright)."""
    for (name, accelerator), entry in list(precisions.items()):
        target = aliases.get(accelerator)
        if target is not None and accelerator not in accelerators:
            del precisions[(name, accelerator)]
            conflicts[(PRECISION, key_text((name, accelerator)))] = Conflict(
                PRECISION,
                label(PRECISION, (name, accelerator)),
                (entry.origin,),
                entry.priority,
                message=f"precision {name!r} of {entry.origin} is ignored: it is registered on {accelerator!r},"
                f" an alias of accelerator {target!r}; register it on {target!r}.",
            )


def _resolve_aliases(
    kind: str,
    claims: list[tuple[str, str, Origin, int]],
    reserved: set[str] | frozenset[str],
    conflicts: dict[tuple[str, str], Conflict],
) -> dict[str, str]:
    """Alias -> name, by the same rule as names; an alias that is itself a name is dropped."""
    by_alias: dict[str, dict[str, tuple[Origin, int]]] = {}
    for alias, target, origin, priority in claims:
        if alias == target:
            continue
        if alias in reserved:
            what = "a registered name" if alias not in _RESERVED_PRECISION_NAMES else "a built-in name"
            conflicts[(kind, alias)] = Conflict(kind, f"{alias!r} for {target!r}", (origin,), priority, what)
            continue
        best = by_alias.setdefault(alias, {}).get(target)
        if best is None or priority > best[1]:
            by_alias[alias][target] = (origin, priority)
    resolved: dict[str, str] = {}
    for alias, targets in by_alias.items():
        top = max(priority for _, priority in targets.values())
        winners = sorted(target for target, (_, priority) in targets.items() if priority == top)
        if len(winners) == 1:
            resolved[alias] = winners[0]
        else:
            origins = sorted_origins(targets[target][0] for target in winners)
            claimed = f"{alias!r} (for {' and '.join(map(repr, winners))})"
            conflicts[(kind, alias)] = Conflict(kind, claimed, origins, top)
    return resolved


def override_message(kind: str, key: Any, winner: Origin, losers: tuple[Origin, ...]) -> str:
    """The sentence for a key one plugin took over from others by priority, naming every distribution."""
    what = label(kind, key) if isinstance(key, tuple) else repr(key)
    return (
        f"{kind} {what} comes from {winner}, which overrides {' and '.join(map(str, losers))} by priority."
        f" If that is not what you want, PREC_DISABLED_PLUGINS={winner.plugin} restores the original."
    )
