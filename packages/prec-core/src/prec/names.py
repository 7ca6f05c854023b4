"""Precision names: the canonical strings, the legacy values Lightning users type, and their normalisation."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from prec._warnings import warn
from prec.errors import LegacyPrecisionWarning, UnknownPrecisionError

CANONICAL_PRECISIONS: tuple[str, ...] = ("16-mixed", "bf16-mixed", "16-true", "bf16-true", "32-true", "64-true")
AUTO = "auto"

# Legacy values that keep working but warn: they hide whether weights or only activations are 16 bit.
_LEGACY_WARN: dict[object, str] = {16: "16-mixed", "16": "16-mixed", "bf16": "bf16-mixed"}
# Legacy values that are unambiguous, so they stay silent.
_LEGACY_SILENT: dict[object, str] = {32: "32-true", "32": "32-true", 64: "64-true", "64": "64-true"}

PrecisionInput = str | int | None


def legacy_names() -> dict[str, str]:
    """Every legacy spelling (as text) mapped to its canonical name, for docs and ``prec list``."""
    legacy = {**_LEGACY_WARN, **_LEGACY_SILENT}
    return {repr(key) if isinstance(key, str) else str(key): value for key, value in legacy.items()}


def normalize_precision(value: PrecisionInput, known: Iterable[str] = CANONICAL_PRECISIONS) -> str:
    """Return the canonical precision name for ``value``, or raise :class:`UnknownPrecisionError`.

    ``known`` are the names installed plugins registered (canonical names are always accepted, so the
    "not supported on this accelerator" error can explain itself instead of "unknown name").
    """
    if value is None:
        return "32-true"
    # bool is an int subclass; True must not become precision 1 or hash-equal a legacy key.
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _unknown(value, known)
    if isinstance(value, str):
        if value == AUTO or value in CANONICAL_PRECISIONS:
            return value
        if value in known:
            return value
    if value in _LEGACY_SILENT:
        return _LEGACY_SILENT[value]
    if value in _LEGACY_WARN:
        canonical = _LEGACY_WARN[value]
        warn(
            f"precision={value!r} is a legacy value; use precision={canonical!r}, which says that weights stay in"
            " float32 and only the operations that benefit run in 16 bit.",
            LegacyPrecisionWarning,
        )
        return canonical
    raise _unknown(value, known)


def _unknown(value: object, known: Iterable[str]) -> UnknownPrecisionError:
    names = sorted(set(CANONICAL_PRECISIONS) | set(known))
    message = f"precision={value!r} is not a precision name. Valid names: {', '.join(names)}"
    message += "; legacy values 16, '16', 'bf16', 32, '32', 64, '64'; or 'auto'."
    if isinstance(value, str):
        lowered = value.strip().lower().replace("_", "-")
        match = difflib.get_close_matches(lowered, names + ["auto"], n=1, cutoff=0.5)
        if match:
            message += f" Did you mean {match[0]!r}?"
    elif isinstance(value, float) and value.is_integer():
        canonical = {**_LEGACY_WARN, **_LEGACY_SILENT}.get(int(value))
        if canonical:
            message += f" Did you mean {canonical!r}?"
    return UnknownPrecisionError(message)
