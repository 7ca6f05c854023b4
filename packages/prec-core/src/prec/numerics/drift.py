"""Drift check: are the low-precision gradients still the gradients of the model?

:func:`gradient_drift` recomputes one micro-batch's loss and gradients in a reference dtype (float32 or float64)
from the same weights, on a deep copy of the model (no autocast, the model itself untouched), and compares them
per layer with the gradients the low-precision step produced::

    loss = loss_fn(model, batch)           # the training step, at its precision
    loss.backward()
    report = gradient_drift(model, batch, loss_fn, low_loss=loss)   # gradients read from model's .grad
    verdict = judge(report)
    if not verdict.ok:
        print(verdict.summary())

Per layer (the module owning the parameters, parameters together) and per parameter: the relative error
``||g_lo - g_ref|| / ||g_ref||`` and the cosine between ``g_lo`` and ``g_ref``; for the model: the relative loss
gap ``|loss_lo - loss_ref| / |loss_ref|``. :func:`judge` names the layers whose cosine, or the cosine of one of
their parameters, is under :data:`MIN_COSINE` (a bias's large gradient must not hide a drifting weight), and says
whether the loss gap exceeds :data:`MAX_LOSS_GAP` or grows check after check.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from prec.errors import ConfigurationError
from prec.numerics.measure import cast_batch, model_copy

__all__ = ["MAX_LOSS_GAP", "MIN_COSINE", "DriftReport", "DriftVerdict", "LayerDrift", "gradient_drift", "judge"]

#: A gradient whose elements carry independent relative errors r has cosine ~ 1 - r**2 / 2 with the exact one:
#: bf16 rounding (r ~ 0.3 %) gives 0.999995 and even fp8 e5m2 (r ~ 7 %) 0.9975, while 0.99 means r ~ 14 %. Under
#: it the layer's gradient points somewhere else than any well-behaved format's rounding would take it.
MIN_COSINE = 0.99
#: A relative loss gap of 1 % is what the loss of a healthy bf16 step typically stays well inside.
MAX_LOSS_GAP = 0.01


@dataclass(frozen=True)
class LayerDrift:
    """One layer's gradient against the reference: relative error and cosine."""

    name: str
    relative_error: float
    cosine: float


@dataclass(frozen=True)
class DriftReport:
    """One drift check: every layer (its parameters together), every parameter (by qualified name), and the loss
    in both precisions (``low_loss`` None when not given)."""

    layers: dict[str, LayerDrift]
    reference_loss: float
    low_loss: float | None
    parameters: dict[str, LayerDrift] = field(default_factory=dict)

    def worst_cosine(self, layer: str) -> float:
        """The smallest cosine of ``layer``: of its parameters together or of any one of them."""
        own = [drift.cosine for name, drift in self.parameters.items() if _owner(name) == layer]
        return min([self.layers[layer].cosine, *own])

    @property
    def loss_gap(self) -> float | None:
        """``|loss_lo - loss_ref| / |loss_ref|`` (None without a low-precision loss)."""
        if self.low_loss is None:
            return None
        if self.reference_loss == 0.0:
            return 0.0 if self.low_loss == 0.0 else math.inf
        return abs(self.low_loss - self.reference_loss) / abs(self.reference_loss)


@dataclass(frozen=True)
class DriftVerdict:
    """Which layers drifted (name, cosine), whether the loss gap is too large or growing, and why."""

    drifted: tuple[tuple[str, float], ...]
    loss_gap_growing: bool
    reasons: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.drifted and not self.loss_gap_growing

    def summary(self) -> str:
        return "no drift" if self.ok else "; ".join(self.reasons)


def _owner(parameter_name: str) -> str:
    return parameter_name.rpartition(".")[0]


def gradient_drift(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: Callable[[torch.nn.Module, Any], Tensor],
    low_grads: Mapping[str, Tensor] | None = None,
    reference_dtype: torch.dtype = torch.float32,
    *,
    low_loss: float | Tensor | None = None,
    plain_linear: bool = False,
) -> DriftReport:
    """Compare ``low_grads`` (``{parameter name: gradient}``; default: the ``.grad`` of ``model``'s parameters)
    with gradients recomputed in ``reference_dtype`` from the same weights and ``batch``.

    ``plain_linear``: in the reference, every subclass of ``torch.nn.Linear`` runs as ``torch.nn.Linear`` — the
    fp8 and int8 training layers of prec-torchao are such subclasses, and would otherwise compute the reference
    in their own format."""
    if reference_dtype not in (torch.float32, torch.float64):
        raise ConfigurationError(f"reference_dtype must be torch.float32 or torch.float64, got {reference_dtype}.")
    if low_grads is None:
        low_grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    if not low_grads:
        raise ConfigurationError("low_grads: no gradient to compare; run backward first or pass low_grads.")
    reference = model_copy(model, reference_dtype)
    if plain_linear:
        for module in reference.modules():
            if isinstance(module, torch.nn.Linear) and type(module) is not torch.nn.Linear:
                module.__class__ = torch.nn.Linear  # same parameters, torch's own float matmul
    reference.zero_grad(set_to_none=True)
    ref_loss = loss_fn(reference, cast_batch(batch, reference_dtype))
    ref_loss.backward()
    ref_grads = dict(reference.named_parameters())
    per_parameter: dict[str, Tensor] = {}
    for name, grad in low_grads.items():
        if name not in ref_grads:
            raise ConfigurationError(f"low_grads: {name!r} is not a parameter of the model.")
        ref = ref_grads[name].grad
        if ref is None or grad is None:
            continue
        low, exact = grad.detach().double().flatten(), ref.detach().double().flatten()
        difference = low - exact
        per_parameter[name] = torch.stack([difference @ difference, exact @ exact, low @ exact, low @ low])
    per_layer: dict[str, Tensor] = {}
    for name, parts in per_parameter.items():
        previous = per_layer.get(_owner(name))
        per_layer[_owner(name)] = parts if previous is None else previous + parts
    keys = [*per_parameter, *per_layer]
    host = torch.stack([*per_parameter.values(), *per_layer.values()]).cpu().tolist() if keys else []
    drifts = [_drift(name, *values) for name, values in zip(keys, host, strict=True)]
    low = None if low_loss is None else float(low_loss.detach() if isinstance(low_loss, Tensor) else low_loss)
    return DriftReport(
        layers={drift.name: drift for drift in drifts[len(per_parameter) :]},
        reference_loss=float(ref_loss.detach()),
        low_loss=low,
        parameters={drift.name: drift for drift in drifts[: len(per_parameter)]},
    )


def _drift(name: str, error2: float, ref2: float, dot: float, low2: float) -> LayerDrift:
    if not math.isfinite(error2):
        return LayerDrift(name, math.inf, -1.0)
    relative = math.sqrt(error2 / ref2) if ref2 > 0 else (0.0 if error2 == 0 else math.inf)
    denominator = math.sqrt(ref2 * low2)
    cosine = dot / denominator if denominator > 0 else (1.0 if ref2 == low2 == 0 else 0.0)
    return LayerDrift(name, relative, cosine)


def judge(
    reports: DriftReport | Sequence[DriftReport], *, min_cosine: float = MIN_COSINE, max_loss_gap: float = MAX_LOSS_GAP
) -> DriftVerdict:
    """The verdict on the latest report (layers under ``min_cosine``) and on the loss gap over all of them: too
    large now, or larger at every check of three or more."""
    history = [reports] if isinstance(reports, DriftReport) else list(reports)
    if not history:
        raise ConfigurationError("reports: give at least one DriftReport.")
    latest = history[-1]
    drifted = tuple(
        sorted(
            ((name, latest.worst_cosine(name)) for name in latest.layers if latest.worst_cosine(name) < min_cosine),
            key=lambda item: item[1],
        )
    )
    reasons = [f"{name or '(root)'}: gradient cosine {cosine:.4f} < {min_cosine}" for name, cosine in drifted]
    gaps = [report.loss_gap for report in history if report.loss_gap is not None]
    growing = False
    if gaps and gaps[-1] > max_loss_gap:
        growing = True
        reasons.append(f"loss gap {100 * gaps[-1]:.3f}% > {100 * max_loss_gap:.3f}%")
    elif len(gaps) >= 3 and all(later > earlier for earlier, later in zip(gaps, gaps[1:], strict=False)):
        growing = True
        reasons.append(f"loss gap grew at each of {len(gaps)} checks, to {100 * gaps[-1]:.3f}%")
    return DriftVerdict(drifted=drifted, loss_gap_growing=growing, reasons=tuple(reasons))
