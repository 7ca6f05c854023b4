"""A precision plan: which modules keep float32, which stay out of fp8, whether master weights are needed, and why.

A :class:`Plan` is plain data. It is written as JSON (schema version :data:`SCHEMA_VERSION`)::

    {
      "schema_version": 1,
      "precision": "16-mixed",
      "keep_float32": [{"module": "blocks.3.mlp.fc2", "reason": "..."}],
      "fp8_exclude": [{"module": "head", "reason": "..."}],
      "master_weights": {"mode": "kahan", "reason": "..."} | null,
      "notes": ["..."],
      "thresholds": {"max_error_16": 0.02, ...}
    }

and validated on load: an unknown schema version, a missing or unknown key, or a value of the wrong type is a
:class:`~prec.ConfigurationError` naming the file and the key. Loading only parses JSON; nothing is executed.
:meth:`Plan.precision_options` is what the Trainer's ``precision_options`` takes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from prec.errors import ConfigurationError
from prec.options import MASTER_WEIGHT_MODES

__all__ = [
    "PLAN_OPTION",
    "SCHEMA_VERSION",
    "Decision",
    "MasterWeightsDecision",
    "Plan",
    "exact_pattern",
    "expand_plan_option",
]

SCHEMA_VERSION = 1
#: The ``precision_options`` key that takes a plan (a file path or a :class:`Plan`): see :func:`expand_plan_option`.
PLAN_OPTION = "plan"
#: Where a plan's ``fp8_exclude`` goes in an fp8 precision's options: prec-torchao's layer filter takes name
#: patterns as ``skip``.
FP8_EXCLUDE_OPTION = "skip"
_KEYS = ("schema_version", "precision", "keep_float32", "fp8_exclude", "master_weights", "notes", "thresholds")


def exact_pattern(name: str) -> str:
    """A module name as an fnmatch pattern that matches exactly that name (``keep_float32`` takes patterns)."""
    return "".join(f"[{char}]" if char in "*?[" else char for char in name)


@dataclass(frozen=True)
class Decision:
    """One module the plan treats specially, and why."""

    module: str
    reason: str


@dataclass(frozen=True)
class MasterWeightsDecision:
    """The ``master_weights`` mode the plan asks for, and why."""

    mode: str
    reason: str


@dataclass(frozen=True)
class Plan:
    """A measured precision plan (see the module documentation)."""

    precision: str
    keep_float32: tuple[Decision, ...] = ()
    fp8_exclude: tuple[Decision, ...] = ()
    master_weights: MasterWeightsDecision | None = None
    notes: tuple[str, ...] = ()
    thresholds: dict[str, float] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def precision_options(self) -> dict[str, Any]:
        """The Trainer's ``precision_options``: ``keep_float32`` (exact name patterns), ``master_weights``, and the
        ``fp8_exclude`` modules as ``skip`` (the option prec-torchao's fp8 precisions filter layers with); keys with
        nothing to say are left out."""
        options: dict[str, Any] = {}
        if self.keep_float32:
            options["keep_float32"] = [exact_pattern(item.module) for item in self.keep_float32]
        if self.fp8_exclude:
            options[FP8_EXCLUDE_OPTION] = [exact_pattern(item.module) for item in self.fp8_exclude]
        if self.master_weights is not None:
            options["master_weights"] = self.master_weights.mode
        return options

    def lines(self) -> list[str]:
        """The plan for people: one line per decision, each with its reason."""
        lines = [f"plan for {self.precision}:"]
        lines += [f"  keep_float32 {item.module or '(root)'}: {item.reason}" for item in self.keep_float32]
        lines += [f"  fp8_exclude {item.module or '(root)'}: {item.reason}" for item in self.fp8_exclude]
        if self.master_weights is not None:
            lines.append(f"  master_weights={self.master_weights.mode!r}: {self.master_weights.reason}")
        if len(lines) == 1:
            lines.append("  nothing to change")
        lines += [f"  note: {note}" for note in self.notes]
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "precision": self.precision,
            "keep_float32": [{"module": d.module, "reason": d.reason} for d in self.keep_float32],
            "fp8_exclude": [{"module": d.module, "reason": d.reason} for d in self.fp8_exclude],
            "master_weights": None
            if self.master_weights is None
            else {"mode": self.master_weights.mode, "reason": self.master_weights.reason},
            "notes": list(self.notes),
            "thresholds": dict(self.thresholds),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def from_json(cls, text: str, source: str = "<string>") -> Plan:
        """Parse and validate a plan; ``source`` (a file name) is named in every error."""
        try:
            data = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, TypeError) as error:
            raise ConfigurationError(f"{source}: not a precision plan (invalid JSON: {error}).") from None
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigurationError(f"{path}: cannot read the precision plan ({error}).") from None
        return cls.from_json(text, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> Plan:
        if not isinstance(data, dict):
            raise ConfigurationError(f"{source}: a precision plan is a JSON object, got {type(data).__name__}.")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION or isinstance(version, bool):
            raise ConfigurationError(
                f"{source}: key 'schema_version' is {version!r}; this prec reads plans of schema_version"
                f" {SCHEMA_VERSION}."
            )
        unknown = sorted(set(data) - set(_KEYS))
        if unknown:
            raise ConfigurationError(
                f"{source}: unknown key {unknown[0]!r} in the precision plan; the keys are {', '.join(_KEYS)}."
            )
        missing = [key for key in _KEYS if key not in data]
        if missing:
            raise ConfigurationError(f"{source}: key {missing[0]!r} is missing from the precision plan.")
        precision = data["precision"]
        if not isinstance(precision, str) or not precision:
            raise ConfigurationError(f"{source}: key 'precision' must be a precision name, got {precision!r}.")
        notes = data["notes"]
        if not isinstance(notes, list) or not all(isinstance(note, str) for note in notes):
            raise ConfigurationError(f"{source}: key 'notes' must be a list of strings.")
        thresholds = data["thresholds"]
        if not isinstance(thresholds, dict) or not all(
            isinstance(value, (int, float)) and not isinstance(value, bool) for value in thresholds.values()
        ):
            raise ConfigurationError(f"{source}: key 'thresholds' must be an object of numbers.")
        return cls(
            precision=precision,
            keep_float32=_decisions(data["keep_float32"], "keep_float32", source),
            fp8_exclude=_decisions(data["fp8_exclude"], "fp8_exclude", source),
            master_weights=_master_weights(data["master_weights"], source),
            notes=tuple(notes),
            thresholds={str(key): float(value) for key, value in thresholds.items()},
        )


def expand_plan_option(precision: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with ``plan`` (a path to a plan file, or a :class:`Plan`) replaced by the plan's options.

    The one place a plan becomes precision options (the registry calls it for every precision it builds, once
    ``"auto"`` is resolved to ``precision``). A plan made for another precision, or an option given both by the
    plan and explicitly, is a :class:`~prec.ConfigurationError` naming both; an empty plan adds nothing."""
    if PLAN_OPTION not in options:
        return dict(options)
    rest = {key: value for key, value in options.items() if key != PLAN_OPTION}
    value = options[PLAN_OPTION]
    if isinstance(value, Plan):
        plan, source = value, "the plan"
    elif isinstance(value, (str, PathLike)):
        plan, source = Plan.load(value), str(value)
    else:
        raise ConfigurationError(
            f"precision_options: plan={value!r} must be a path to a plan file (prec plan --output) or a"
            " prec.numerics.Plan."
        )
    if plan.precision != precision:
        raise ConfigurationError(
            f"precision_options: {source} is a plan for {plan.precision!r}, but the precision is {precision!r};"
            f" make a plan for {precision!r} (prec plan ... --precision {precision}) or train at {plan.precision!r}."
        )
    planned = plan.precision_options()
    both = sorted(set(planned) & set(rest))
    if both:
        raise ConfigurationError(
            f"precision_options: {both[0]!r} is given both by {source} ({planned[both[0]]!r}) and explicitly"
            f" ({rest[both[0]]!r}); drop one of them (edit the plan to change what it decides)."
        )
    return {**rest, **planned}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not plain JSON")


def _entry(value: Any, keys: tuple[str, str], where: str, source: str) -> dict[str, str]:
    if not isinstance(value, dict) or set(value) != set(keys):
        raise ConfigurationError(f"{source}: key {where!r} must hold objects with exactly the keys {', '.join(keys)}.")
    for key in keys:
        if not isinstance(value[key], str):
            raise ConfigurationError(f"{source}: key '{where}.{key}' must be a string, got {value[key]!r}.")
    return value


def _decisions(value: Any, key: str, source: str) -> tuple[Decision, ...]:
    if not isinstance(value, list):
        raise ConfigurationError(f"{source}: key {key!r} must be a list of {{module, reason}} objects.")
    return tuple(Decision(**_entry(item, ("module", "reason"), key, source)) for item in value)


def _master_weights(value: Any, source: str) -> MasterWeightsDecision | None:
    if value is None:
        return None
    entry = _entry(value, ("mode", "reason"), "master_weights", source)
    if entry["mode"] not in MASTER_WEIGHT_MODES:
        raise ConfigurationError(
            f"{source}: key 'master_weights.mode' is {entry['mode']!r}; accepted: {', '.join(MASTER_WEIGHT_MODES)}."
        )
    return MasterWeightsDecision(**entry)
