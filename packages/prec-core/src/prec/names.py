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

#: How many names an error message lists before it says "and N more": a message stays readable however many
#: plugins are installed.
LISTED_NAMES = 20


def readable_list(names: Iterable[object], limit: int = LISTED_NAMES, *, empty: str = "none") -> str:
    """``"a, b, c"``, or the first ``limit`` and ``"and N more"``; ``empty`` when there are none."""
    items = [str(name) for name in names]
    if not items:
        return empty
    if len(items) <= limit:
        return ", ".join(items)
    return f"{', '.join(items[:limit])} and {len(items) - limit} more"


# What people type for a dtype or another framework's name -> the precision they most likely mean. A suggestion
# only: none of these is accepted, because each hides whether weights or only the math are 16 bit.
_COMMON_MISTAKES: dict[str, str] = {
    "fp16": "16-mixed",
    "float16": "16-mixed",
    "half": "16-mixed",
    "f16": "16-mixed",
    "16-bit": "16-mixed",
    "mixed": "16-mixed",
    "amp": "16-mixed",
    "fp16-mixed": "16-mixed",
    "bfloat16": "bf16-mixed",
    "bf-16": "bf16-mixed",
    "fp32": "32-true",
    "float32": "32-true",
    "float": "32-true",
    "single": "32-true",
    "full": "32-true",
    "f32": "32-true",
    "fp64": "64-true",
    "float64": "64-true",
    "double": "64-true",
    "f64": "64-true",
}


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
    message = f"precision={_show(value)} is not a precision name. Valid names: {readable_list(names)}"
    message += "; legacy values 16, '16', 'bf16', 32, '32', 64, '64'; or 'auto'."
    if isinstance(value, str):
        suggestion = did_you_mean(value, names)
        if suggestion:
            message += f" Did you mean {suggestion!r}?"
    elif isinstance(value, float) and value.is_integer():
        canonical = {**_LEGACY_WARN, **_LEGACY_SILENT}.get(int(value))
        if canonical:
            message += f" Did you mean {canonical!r}?"
    return UnknownPrecisionError(message)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}...{text[-10:]} ({len(text)} characters)"


def did_you_mean(value: str, known: Iterable[str] = CANONICAL_PRECISIONS) -> str | None:
    """The precision name ``value`` most likely meant (``"fp16"`` -> ``"16-mixed"``, ``"bf16_mixed"`` ->
    ``"bf16-mixed"``, ``"double"`` -> ``"64-true"``), or ``None``."""
    lowered = value.strip().lower().replace("_", "-").replace(" ", "-")
    names = sorted(set(CANONICAL_PRECISIONS) | set(known))
    if lowered in names or lowered == AUTO:
        return lowered
    if lowered in _COMMON_MISTAKES:
        return _COMMON_MISTAKES[lowered]
    for suffix in ("-mixed", "-true"):  # "torch.float16-mixed", "bfloat16-true": a dtype spelt out
        stem = lowered.removeprefix("torch.").removesuffix(suffix)
        if stem != lowered.removeprefix("torch.") and stem in _COMMON_MISTAKES:
            return _COMMON_MISTAKES[stem].rsplit("-", 1)[0] + suffix
    if lowered.removeprefix("torch.") in _COMMON_MISTAKES:
        return _COMMON_MISTAKES[lowered.removeprefix("torch.")]
    match = difflib.get_close_matches(lowered, names + [AUTO], n=1, cutoff=0.5)
    return match[0] if match else None
