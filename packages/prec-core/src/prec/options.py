"""Precision options: one way for every plugin, first-party or not, to check ``precision_options``; and the
``master_weights`` option parsed once into :class:`MasterWeights`, which the precisions and measured plans share.

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
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from prec.errors import ConfigurationError

__all__ = ["MASTER_WEIGHT_MODES", "MISSING", "MasterWeights", "Option", "check_options", "is_number", "is_positive_int"]


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


# -- master_weights: parsed once into what it means -------------------------------------------------------------
# Code asks a mode what it does (``keeps_float32_copy``, ``compensates``, ...) instead of comparing spellings, so a
# new mode is one new member here. A member is a ``str``: it equals its spelling (``MasterWeights.KAHAN ==
# "kahan"``), so code, plan files and checkpoints that hold the spelling keep working.


class MasterWeights(str, Enum):
    """How bf16-true / 16-true keep the updates that 16-bit weights drop (``None`` is plain 16-bit weights)."""

    FP32 = "fp32"
    KAHAN = "kahan"
    STOCHASTIC = "stochastic"

    @property
    def keeps_float32_copy(self) -> bool:
        """The optimizer steps persistent float32 copies (and keeps its state in float32)."""
        return self is MasterWeights.FP32

    @property
    def compensates(self) -> bool:
        """A bfloat16 buffer carries what rounding the new weight to nearest dropped (Kahan summation)."""
        return self is MasterWeights.KAHAN

    @property
    def rounds_stochastically(self) -> bool:
        """Weights and optimizer state stay 16-bit; each step runs on float32 working copies and rounds the
        results back stochastically (the weights too, unless compensated)."""
        return self is not MasterWeights.FP32

    @property
    def bytes_per_param(self) -> int:
        """Persistent bytes per 16-bit parameter beside the weight, gradient and optimizer state."""
        return {MasterWeights.FP32: 4, MasterWeights.KAHAN: 2, MasterWeights.STOCHASTIC: 0}[self]

    @property
    def weight_dtypes(self) -> tuple[torch.dtype, ...]:
        """The 16-bit weights the mode works with: its unbiased rounding is bfloat16's."""
        import torch  # here, not at the top: `import prec` and `prec list` must not import torch

        return (torch.bfloat16, torch.float16) if self.keeps_float32_copy else (torch.bfloat16,)

    @classmethod
    def spellings(cls) -> tuple[str, ...]:
        """The accepted values of the option besides ``None``."""
        return tuple(member.value for member in cls)

    @classmethod
    def parse(cls, value: Any, *, owner: str = "master_weights") -> MasterWeights | None:
        """``value`` as a mode (``None`` stays ``None``); anything else raises naming what is accepted."""
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, str) and value in cls.spellings():
            return cls(value)
        raise ConfigurationError(
            f"{owner}: master_weights={value!r} is not valid; use None (plain 16-bit weights) or one of"
            f" {', '.join(map(repr, cls.spellings()))}."
        )

    def check_dtype(self, dtype: torch.dtype, *, owner: str) -> None:
        """Refuse 16-bit weights of a dtype this mode cannot round (float16 under the cheap modes)."""
        if dtype not in self.weight_dtypes:
            raise ConfigurationError(
                f"{owner}: master_weights={self.value!r} needs bfloat16 weights (its unbiased rounding of weights"
                " and optimizer state is bfloat16's); use master_weights='fp32'."
            )

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


#: The values of the ``master_weights`` option (``None`` is plain 16-bit weights).
MASTER_WEIGHT_MODES: tuple[str, ...] = MasterWeights.spellings()
