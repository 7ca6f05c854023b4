"""Precision options: one way for every plugin, first-party or not, to check ``precision_options``.

A factory declares what it accepts as :class:`Option` objects and calls :func:`check_options` first thing, so a
misspelt or out-of-range option is a :class:`~prec.ConfigurationError` that names the precision, the option and
what is accepted, never a bare ``TypeError`` from a constructor::

    OPTIONS = (Option("init_scale", "a finite number > 0", lambda v: is_number(v) and 0 < v < math.inf, 65536.0),)

    def half_mixed(accelerator, **options):
        options = check_options("16-mixed", options, OPTIONS)
        ...
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prec.errors import ConfigurationError

__all__ = ["MISSING", "Option", "check_options", "is_number", "is_positive_int"]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: The default of an :class:`Option` that has none: it is left out of the result when not given.
MISSING: Any = _Missing()


def is_number(value: Any) -> bool:
    """A real int or float (``True`` is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class Option:
    """One accepted option: its name, what a valid value is (in words, for the error), a check and a default."""

    name: str
    expected: str
    check: Callable[[Any], bool] = field(default=lambda value: True, repr=False)
    default: Any = MISSING


def check_options(
    owner: str, options: Mapping[str, Any], accepted: Iterable[Option], *, note: str = ""
) -> dict[str, Any]:
    """Validate ``options`` for ``owner`` (a precision name) and return them with the defaults filled in.

    Raises :class:`~prec.ConfigurationError` for an unknown option (with a did-you-mean and the accepted names)
    or a value its check rejects (with what is expected). ``note`` is appended to the unknown-option message.
    """
    if not isinstance(options, Mapping):
        raise ConfigurationError(f"precision_options for {owner} must be a dict, got {type(options).__name__}.")
    specs = {option.name: option for option in accepted}
    unknown = sorted(str(key) for key in options if key not in specs)
    if unknown:
        valid = ", ".join(sorted(specs)) or "none"
        hints = [difflib.get_close_matches(key, list(specs), n=1) for key in unknown]
        hint = "".join(
            f" Did you mean {match[0]!r} for {key!r}?" for key, match in zip(unknown, hints, strict=True) if match
        )
        raise ConfigurationError(
            f"precision_options for {owner}: unknown option(s) {', '.join(map(repr, unknown))}{note}."
            f" {owner} accepts: {valid}.{hint}"
        )
    result: dict[str, Any] = {}
    for name, spec in specs.items():
        if name in options:
            value = options[name]
            if not _accepts(spec, value):
                raise ConfigurationError(f"precision_options for {owner}: {name}={value!r} must be {spec.expected}.")
            result[name] = value
        elif spec.default is not MISSING:
            result[name] = spec.default
    return result


def _accepts(spec: Option, value: Any) -> bool:
    """A check that raises on a value of a type it did not expect (``all(...)`` over an int) rejects the value: the
    mistake is the user's option, not the plugin's."""
    try:
        return bool(spec.check(value))
    except Exception:  # noqa: BLE001 - any failure of the check means "not accepted"
        return False
