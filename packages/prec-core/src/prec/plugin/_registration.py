"""What a plugin's hooks are handed, and what makes them unusable: the ``register`` callable of each hook, which
checks its arguments and builds the registry entry, and the check for misspelt or undecorated hooks.

Kept apart from :mod:`prec.plugin.manager`, which finds plugins, calls their hooks and isolates their failures; this
module is the contract a registration must meet (the arguments each ``register`` takes are documented in
:mod:`prec.hookspecs`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prec.errors import PluginError
from prec.plugin import _verify
from prec.plugin.entries import (
    ACCELERATOR,
    PRECISION,
    STRATEGY,
    AcceleratorEntry,
    Origin,
    PrecisionEntry,
    StrategyEntry,
)

if TYPE_CHECKING:
    from prec.plugin.registry import Registry

__all__ = ["HOOK_ORDER", "Stage", "hook_problem", "register_callables"]

#: Every hook, in the order the loader calls them for each plugin.
HOOK_ORDER = ("prec_register_accelerators", "prec_register_precisions", "prec_register_strategies")

#: Takes one checked registration: ``stage(kind, key, add, entry, priority)``, where ``add(entry)`` puts it in the
#: registry once the plugin's hooks have all run.
Stage = Callable[[str, Any, Callable[[Any], None], Any, int], None]


def register_callables(registry: Registry, origin: Origin, stage: Stage) -> dict[str, Any]:
    """Hook name -> the ``register`` callable for ``origin``'s implementation of it: each checks its arguments
    (a mistake raises, which breaks that plugin alone) and hands the entry to ``stage``."""

    def register_accelerator(accelerator: type, *, priority: int = 0) -> None:
        from prec.accelerator import Accelerator

        if not (isinstance(accelerator, type) and issubclass(accelerator, Accelerator)) or not accelerator.name:
            raise TypeError(f"register() takes an Accelerator subclass with a name, got {accelerator!r}")
        if accelerator.name != accelerator.name.lower():
            raise TypeError(f"accelerator names are lower case (they match in any case): {accelerator.name!r}")
        aliases = _verify.names(accelerator.aliases, "aliases")
        entry = AcceleratorEntry(accelerator.name, accelerator, aliases, origin, _verify.priority(priority))
        stage(ACCELERATOR, entry.name, registry.add_accelerator, entry, entry.priority)

    def register_precision(
        name: str,
        accelerator: str,
        factory: Callable[..., Any],
        *,
        aliases: Iterable[str] = (),
        priority: int = 0,
        description: str = "",
    ) -> None:
        name, accelerator = _verify.precision_key(name, accelerator, registry.alias_target)
        takes_options = _verify.precision_factory(factory, name, accelerator)
        entry = PrecisionEntry(
            name,
            accelerator,
            factory,
            origin,
            _verify.names(aliases, "aliases"),
            _verify.priority(priority),
            description,
            takes_options,
        )
        stage(PRECISION, (name, accelerator), registry.add_precision, entry, entry.priority)

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
            raise TypeError(f"register() takes (name: str, factory: callable), got {name!r}, {factory!r}")
        entry = StrategyEntry(
            name,
            factory,
            origin,
            None if accelerators is None else frozenset(_verify.names(accelerators, "accelerators")),
            None if precisions is None else frozenset(_verify.names(precisions, "precisions")),
            _verify.priority(priority),
            description,
        )
        stage(STRATEGY, name, registry.add_strategy, entry, entry.priority)

    return {
        "prec_register_accelerators": register_accelerator,
        "prec_register_precisions": register_precision,
        "prec_register_strategies": register_strategy,
    }


def hook_problem(plugin: object, implemented: dict[str, Any], unknown: list[str]) -> PluginError | None:
    """Why a plugin's hooks cannot work (a misspelt hook, a missing decorator), or None."""
    if unknown:
        hints = [difflib.get_close_matches(hook, HOOK_ORDER, n=1) for hook in unknown]
        spelled = "".join(
            f" ({hook}: did you mean {hint[0]}?)" for hook, hint in zip(unknown, hints, strict=True) if hint
        )
        return PluginError(f"implements unknown hook(s) {', '.join(unknown)}{spelled}; known: {', '.join(HOOK_ORDER)}")
    undecorated = [hook for hook in HOOK_ORDER if hook not in implemented and callable(getattr(plugin, hook, None))]
    if undecorated:
        return PluginError(f"defines {', '.join(undecorated)} without the @prec.hookimpl decorator")
    return None
