"""Registration rules, checked in one place when a plugin registers (as pluggy's ``_verify_hook`` does for hook
signatures), so a mistake fails at load naming the plugin, not later and far away at selection."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prec.errors import PluginError

#: pluggy hookimpl options that mean nothing for prec's hooks (each is called once per plugin, in isolation, and
#: returns nothing): accepting them would suggest an ordering or wrapping that never happens.
MEANINGLESS_HOOKIMPL_OPTIONS = ("wrapper", "hookwrapper", "tryfirst", "trylast", "optionalhook", "specname")


def meaningless_options(opts: Mapping[str, Any]) -> list[str]:
    """The options of a ``@prec.hookimpl(...)`` that prec rejects, as ``name=value`` texts."""
    return [f"{key}={opts[key]!r}" for key in MEANINGLESS_HOOKIMPL_OPTIONS if opts.get(key)]


def hookimpl_options_error(hook: str, rejected: list[str]) -> PluginError:
    return PluginError(
        f"{hook} is declared with @prec.hookimpl({', '.join(rejected)}), which means nothing for prec's hooks"
        " (each runs once per plugin and returns nothing); use plain @prec.hookimpl"
    )


def priority(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"priority must be an int, got {value!r}")
    return value


def names(values: Iterable[str], what: str) -> tuple[str, ...]:
    """A tuple of non-empty strings (a bare string is a mistake: ``aliases="gpu"`` would mean g, p, u)."""
    if isinstance(values, str) or not all(isinstance(value, str) and value for value in values):
        raise TypeError(f"{what} must be a list of names, got {values!r}")
    return tuple(values)


def precision_key(name: Any, accelerator: Any, alias_target: Callable[[str], str | None]) -> tuple[str, str]:
    """``(name, accelerator)`` of a precision registration, the accelerator lower-cased; an accelerator alias
    (``"gpu"``) is refused: the registry matches pairs by the accelerator's name, so the pair would never match."""
    if not isinstance(name, str) or not name or not isinstance(accelerator, str) or not accelerator:
        raise TypeError(f"register() takes (name: str, accelerator: str, factory), got {name!r}, {accelerator!r}")
    accelerator = accelerator.lower()
    target = alias_target(accelerator)
    if target is not None:
        raise PluginError(
            f"registers precision {name!r} on {accelerator!r}, an alias of accelerator {target!r}; pairs are"
            f" matched by the accelerator's name, so register it on {target!r}"
        )
    return name, accelerator


def precision_factory(factory: Any, name: str, accelerator: str) -> bool:
    """A precision factory must be callable as ``factory(accelerator)``; returns whether it takes ``**options``
    (one that does not is given none: precision_options for it are a configuration error at selection)."""
    if not callable(factory):
        raise TypeError(f"the factory for {name!r} on {accelerator!r} is not callable: {factory!r}")
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check
        return True
    try:
        signature.bind(object())
    except TypeError as error:
        raise TypeError(
            f"the factory for {name!r} on {accelerator!r} cannot be called as factory(accelerator, **options):"
            f" {getattr(factory, '__qualname__', repr(factory))}{signature}: {error}"
        ) from None
    return any(param.kind is inspect.Parameter.VAR_KEYWORD for param in signature.parameters.values())
