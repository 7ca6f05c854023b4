"""From measurements to a plan: the rules, and the thresholds they use as named constants.

For a precision (its formats from :data:`~prec.numerics.formats.PRECISION_FORMATS`):

* **keep_float32** a layer when, in the precision's 16-bit format, its outputs overflow (any fraction above
  :data:`MAX_OVERFLOW`: an inf there poisons the step and no loss scale helps a forward overflow), or its output
  or input-gradient error exceeds :data:`MAX_ERROR_16`. Under ``-mixed`` precisions only layers with a matmul
  are candidates: autocast lowers those and leaves norms and embeddings in float32 anyway. fp8 precisions run
  everything outside their fp8 matmuls in bfloat16, so these checks use bf16 for them.
* **fp8_exclude** a Linear layer (the layers fp8 converts) whose e4m3 output error exceeds
  :data:`FP8_MAX_FORWARD_ERROR`, whose e5m2 input-gradient error exceeds :data:`FP8_MAX_BACKWARD_ERROR`, or
  whose matmul is smaller than ``fp8_min_matmul_size`` (0 by default: raise it to leave small matmuls, where
  casting costs more than fp8 saves, in bfloat16).
* **master_weights** for 16-bit weights (``-true``) when a parameter of a layer not kept in float32 loses more
  than :data:`MAX_LOST_UPDATE` of its update (or its 16-bit step was not finite): ``"kahan"`` for bfloat16, the
  recommended mode (+2 bytes per parameter, updates kept through a compensation buffer); ``"fp32"`` for float16,
  which has no cheap unbiased rounding.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from prec.errors import ConfigurationError
from prec.numerics.formats import FORMATS, formats_for_precision
from prec.numerics.measure import LayerMeasurement, Measurements
from prec.numerics.plan import Decision, MasterWeightsDecision, Plan

__all__ = [
    "FP8_MAX_BACKWARD_ERROR",
    "FP8_MAX_FORWARD_ERROR",
    "MAX_ERROR_16",
    "MAX_LOST_UPDATE",
    "MAX_OVERFLOW",
    "Thresholds",
    "make_plan",
    "plan_formats",
]

#: Any overflow of a layer's outputs in the 16-bit format keeps it in float32.
MAX_OVERFLOW = 0.0
#: Relative output / input-gradient error tolerated in a 16-bit format: about 7x what bf16 rounding costs a
#: well-scaled layer (0.3 %, measured; fp16 0.04 %), so only a badly conditioned layer trips it.
MAX_ERROR_16 = 0.02
#: e4m3 output error tolerated in fp8: about 3x what per-tensor scaled e4m3 costs a well-scaled Linear (3.5 %).
FP8_MAX_FORWARD_ERROR = 0.10
#: e5m2 input-gradient error tolerated in fp8: about 3x what e5m2 costs a well-scaled Linear (7 %).
FP8_MAX_BACKWARD_ERROR = 0.20
#: A parameter that loses more than half its update trains at less than half its learning rate.
MAX_LOST_UPDATE = 0.5


@dataclass(frozen=True)
class Thresholds:
    """The thresholds :func:`make_plan` applies (defaults: the module's constants); stored in the plan."""

    max_overflow: float = MAX_OVERFLOW
    max_error_16: float = MAX_ERROR_16
    fp8_max_forward_error: float = FP8_MAX_FORWARD_ERROR
    fp8_max_backward_error: float = FP8_MAX_BACKWARD_ERROR
    max_lost_update: float = MAX_LOST_UPDATE
    fp8_min_matmul_size: int = 0


def _percent(value: float) -> str:
    return "inf" if math.isinf(value) else f"{100 * value:.2f}%"


def _sixteen_bit_reason(layer: LayerMeasurement, fmt: str, limits: Thresholds) -> str | None:
    """Why ``layer`` cannot run in the 16-bit ``fmt``, or None."""
    overflow = layer.overflow.get("activations", {}).get(fmt, 0.0)
    if overflow > limits.max_overflow:
        return (
            f"{_percent(overflow)} of its outputs exceed {fmt}'s largest value {FORMATS[fmt].max:g}"
            " (inf in the forward; loss scaling cannot help)"
        )
    for what, errors in (("output", layer.forward_error), ("input-gradient", layer.backward_error)):
        error = errors.get(fmt)
        if error is not None and error > limits.max_error_16:
            return f"its {what} error in {fmt} is {_percent(error)} > {_percent(limits.max_error_16)}"
    return None


def _fp8_reason(layer: LayerMeasurement, forward: str, backward: str, limits: Thresholds) -> str | None:
    error = layer.forward_error.get(forward)
    if error is not None and error > limits.fp8_max_forward_error:
        return f"its output error in {forward} is {_percent(error)} > {_percent(limits.fp8_max_forward_error)}"
    error = layer.backward_error.get(backward)
    if error is not None and error > limits.fp8_max_backward_error:
        limit = _percent(limits.fp8_max_backward_error)
        return f"its input-gradient error in {backward} is {_percent(error)} > {limit}"
    if layer.matmul_size < limits.fp8_min_matmul_size:
        return f"its matmul ({layer.matmul_size} weights) is below fp8_min_matmul_size={limits.fp8_min_matmul_size}"
    return None


def plan_formats(precision: str) -> list[str]:
    """The formats a plan for ``precision`` reads: its 16-bit format (bf16 beside fp8) and its forward and gradient
    formats; none for a precision wider than 16 bits. Measuring only these keeps ``prec plan`` cheap."""
    roles = formats_for_precision(precision)
    sixteen = "bf16" if FORMATS[roles.forward].scaled else roles.forward
    if FORMATS[sixteen].bits != 16:
        return []
    return list(dict.fromkeys([sixteen, roles.forward, roles.gradients]))


def make_plan(measurements: Measurements, precision: str, *, thresholds: Thresholds | None = None) -> Plan:
    """The plan for ``precision`` from ``measurements`` (see the module documentation for the rules)."""
    if not isinstance(measurements, Measurements):
        raise ConfigurationError(f"measurements must come from measure(), got {type(measurements).__name__}.")
    limits = thresholds or Thresholds()
    needed = plan_formats(precision)
    roles = formats_for_precision(precision)
    fp8 = FORMATS[roles.forward].scaled
    sixteen = "bf16" if fp8 else roles.forward
    missing = [name for name in needed if name not in measurements.formats]
    if missing:
        raise ConfigurationError(
            f"measurements: a plan for {precision} needs the formats {', '.join(missing)}, which were not measured;"
            f" call measure(..., precision={precision!r})."
        )
    notes: list[str] = []
    keep: list[Decision] = []
    exclude: list[Decision] = []
    if FORMATS[sixteen].bits > 16:
        notes.append(f"{precision} computes in {sixteen}: the reference, nothing to keep out of it.")
    else:
        for name, layer in measurements.layers.items():
            if roles.mixed and layer.matmul_size == 0:
                continue
            reason = _sixteen_bit_reason(layer, sixteen, limits)
            if reason is not None:
                keep.append(Decision(name, reason))
    kept = {decision.module for decision in keep}
    if fp8:
        for name, layer in measurements.layers.items():
            if layer.type != "Linear" or name in kept:
                continue
            reason = _fp8_reason(layer, roles.forward, roles.gradients, limits)
            if reason is not None:
                exclude.append(Decision(name, reason))
    master = _master_weights(measurements, roles.weights, kept, limits, notes)
    return Plan(
        precision=precision,
        keep_float32=tuple(keep),
        fp8_exclude=tuple(exclude),
        master_weights=master,
        notes=tuple(notes),
        thresholds={key: float(value) for key, value in asdict(limits).items()},
    )


def _master_weights(
    measurements: Measurements, weights: str, kept: set[str], limits: Thresholds, notes: list[str]
) -> MasterWeightsDecision | None:
    if FORMATS[weights].bits != 16:
        return None
    if weights not in {fmt for layer in measurements.layers.values() for fmt in layer.lost_update}:
        notes.append(
            f"lost updates in {weights} were not measured (measure(..., optimizer=...)): the plan cannot say"
            " whether master_weights is needed."
        )
        return None
    losing: list[tuple[float, str]] = []
    for name, layer in measurements.layers.items():
        if name in kept:
            continue
        for param, ratio in layer.lost_update.get(weights, {}).items():
            if math.isnan(ratio) or ratio > limits.max_lost_update:
                losing.append((math.inf if math.isnan(ratio) else ratio, f"{name}.{param}" if name else param))
    if not losing:
        return None
    losing.sort(reverse=True)
    shown = ", ".join(
        f"{param} ({'non-finite step' if math.isinf(ratio) else _percent(ratio)})" for ratio, param in losing[:5]
    )
    more = f" and {len(losing) - 5} more" if len(losing) > 5 else ""
    limit = _percent(limits.max_lost_update)
    if weights == "bf16":
        return MasterWeightsDecision(
            "kahan",
            f"in bf16 {shown}{more} lose more than {limit} of their update (lost-update ratio, optimizer"
            f" {measurements.optimizer}); 'kahan' keeps what rounding drops in a bf16 compensation buffer"
            " (+2 bytes per parameter)",
        )
    return MasterWeightsDecision(
        "fp32",
        f"in {weights} {shown}{more} lose more than {limit} of their update (lost-update ratio, optimizer"
        f" {measurements.optimizer}); 'fp32' steps float32 copies (+4 bytes per parameter; float16 has no cheap"
        " unbiased rounding for 'kahan')",
    )
