"""One check per kind of argument, shared by the Trainer's configuration and the callbacks' constructors.

Each check takes the argument as the user wrote it (``"max_steps"``, ``"EarlyStopping(patience)"``) and either
returns the value in canonical form or raises :class:`~prec.ConfigurationError` naming the argument, the value
(shortened) and what is accepted, so that no argument reaches a ``TypeError`` deep inside a run.
"""

from __future__ import annotations

import math
import numbers
import reprlib
from collections.abc import Iterable

from prec.accelerator import Accelerator
from prec.errors import ConfigurationError
from prec.loggers._paths import given

__all__ = [
    "check_accelerator",
    "check_bool",
    "check_choice",
    "check_clipping",
    "check_int",
    "check_limit",
    "check_metric_name",
    "check_number",
    "check_optional_int",
    "is_int",
    "is_real",
    "show",
]


def check_accelerator(value: object) -> str | Accelerator:
    """An accelerator instance as is, or a name in lower case (``"Auto"`` works like ``"auto"``)."""
    if isinstance(value, Accelerator):
        return value
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(
            f"accelerator={show(value)} must be an accelerator name such as 'cpu', 'gpu' or 'auto',"
            " or a prec.Accelerator instance."
        )
    return value.strip().lower()


def check_clipping(value: object, algorithm: object) -> tuple[float | None, str | None]:
    """``0`` means no clipping, like ``None``; a bad value or algorithm is a ConfigurationError now, not later."""
    if value is not None and (not is_real(value) or not 0 <= value < math.inf):  # type: ignore[operator]
        raise ConfigurationError(
            f"gradient_clip_val={show(value)} must be a finite number >= 0 (0 or None: no clipping)."
        )
    if algorithm is not None:
        if not isinstance(algorithm, str) or algorithm.lower() not in ("norm", "value"):
            raise ConfigurationError(f"gradient_clip_algorithm={show(algorithm)} must be 'norm' or 'value'.")
        algorithm = algorithm.lower()
    return (float(value) if value else None), algorithm  # type: ignore[arg-type]


def check_limit(name: str, value: object) -> int | float | None:
    """A batch limit: an int (batches), a float in [0, 1] (a fraction of the loader) or None (all batches)."""
    if value is None:
        return None
    if is_int(value):
        if int(value) < 0:  # type: ignore[call-overload]
            raise ConfigurationError(f"{given(name, value)} must be >= 0.")
        return int(value)  # type: ignore[call-overload]
    if not is_real(value):
        raise ConfigurationError(
            f"{given(name, value)} must be an int (batches), a float in [0, 1] (fraction) or None (all)."
        )
    if not 0.0 <= float(value) <= 1.0:  # type: ignore[arg-type]
        raise ConfigurationError(
            f"{given(name, value)} as a fraction must lie in [0, 1]; pass an int for a batch count."
        )
    return float(value)  # type: ignore[arg-type]


def check_int(name: str, value: object, minimum: int, accepted: str) -> int:
    """An int (not a bool) >= ``minimum``; a whole float or a digit string gets a did-you-mean."""
    if not is_int(value):
        hint = ""
        if is_real(value) and math.isfinite(value) and float(value).is_integer():  # type: ignore[arg-type]
            hint = f" Did you mean {given(name, int(value))}?"  # type: ignore[call-overload]
        elif isinstance(value, str) and _ascii_int(value) is not None:
            hint = f" Did you mean {given(name, _ascii_int(value))}? (a number, not a string)"
        raise ConfigurationError(f"{given(name, value)} must be {accepted}.{hint}")
    number = int(value)  # type: ignore[call-overload]
    if number < minimum:
        raise ConfigurationError(f"{given(name, number)} must be {accepted}.")
    return number


def check_optional_int(name: str, value: object, minimum: int, accepted: str) -> int | None:
    return None if value is None else check_int(name, value, minimum, accepted)


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{given(name, value)} must be True or False.")
    return value


def check_number(name: str, value: object, *, optional: bool = False, finite: bool = False) -> float | None:
    """A real number (not a bool, not NaN; with ``finite`` not infinite), as a float; ``None`` when ``optional``."""
    if value is None and optional:
        return None
    if not is_real(value) or (finite and not math.isfinite(value)):  # type: ignore[arg-type]
        accepted = "a finite number" if finite else "a number (not NaN)"
        raise ConfigurationError(f"{given(name, value)} must be {accepted}{', or None' if optional else ''}.")
    return float(value)  # type: ignore[arg-type]


def check_choice(name: str, value: object, choices: Iterable[str]) -> str:
    """One of ``choices`` (exact text); anything else, hashable or not, names them."""
    options = tuple(choices)
    if not isinstance(value, str) or value not in options:
        raise ConfigurationError(f"{given(name, value)} must be {' or '.join(map(repr, options))}.")
    return value


def check_metric_name(name: str, value: object, *, optional: bool = False) -> str | None:
    """The name of a logged metric (a non-empty str); ``None`` when ``optional``."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        accepted = "the name of a logged metric (a non-empty str)" + (", or None" if optional else "")
        raise ConfigurationError(f"{given(name, value)} must be {accepted}.")
    return value


def is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """An int or float that is a number (``True`` and NaN are not)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)


def show(value: object) -> str:
    """A repr short enough for an error message, whatever the user passed."""
    try:
        return reprlib.repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the user's mistake
        return f"<{type(value).__name__}>"


def _ascii_int(text: str) -> int | None:
    """``" 3"`` -> 3; superscripts and other non-ASCII digits are not a number the user meant to type."""
    stripped = text.strip()
    digits = stripped.removeprefix("-")
    if not digits.isascii() or not digits.isdigit() or len(digits) > 18:
        return None
    return int(stripped)
