"""Why a step's gradients were non-finite: the sentence the non-finite guard adds when it skips or raises.

A skipped step has four different causes that need four different fixes, so the guard names the one it sees:

* the weights (or the optimizer's state) already hold inf/NaN: a poisoned state, from a checkpoint or from an
  update that was computed from finite gradients (Adam's ``eps`` underflowing in float16, say). Every later step
  is skipped too; skipping cannot recover, resuming from a finite state can;
* the loss was NaN before loss scaling: the data or the model, not an overflow;
* under loss scaling, non-finite gradients from a finite loss: the scaled backward overflowed, which the grad
  scaler answers by lowering the loss scale;
* without loss scaling: NaN gradients (an invalid operation or NaN data) or inf gradients only (an overflow).

Everything here reads every tensor it is given: it runs when a skip is reported, never per step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["diagnose", "nonfinite_kind", "nonfinite_state"]

_LISTED = 8


def nonfinite_kind(tensors: Iterable[Tensor]) -> str | None:
    """``"NaN"``, ``"inf"``, ``"NaN and inf"`` for what the floating tensors hold, ``None`` if all are finite."""
    nan = inf = False
    for tensor in tensors:
        if not tensor.is_floating_point() and not tensor.is_complex():
            continue
        nan = nan or bool(torch.isnan(tensor).any())
        inf = inf or bool(torch.isinf(tensor).any())
    if nan and inf:
        return "NaN and inf"
    return "NaN" if nan else "inf" if inf else None


def nonfinite_state(optimizer: Optimizer, name_of: Callable[[Tensor], str]) -> tuple[list[str], list[str]]:
    """The non-finite weights of ``optimizer``'s parameters and the non-finite entries of its state, named."""
    weights: list[str] = []
    state: list[str] = []
    for group in optimizer.param_groups:
        for param in group["params"]:
            if nonfinite_kind([param.detach()]) is not None:
                weights.append(name_of(param))
            for key, value in optimizer.state.get(param, {}).items():
                if isinstance(value, Tensor) and nonfinite_kind([value]) is not None:
                    state.append(f"{key!r} of {name_of(param)}")
    return weights, state


def listed(names: list[str]) -> str:
    """At most eight names, then how many more."""
    more = f" and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
    return ", ".join(names[:_LISTED]) + more


def diagnose(optimizer: Optimizer, name_of: Callable[[Tensor], str], loss: Tensor | None = None) -> str:
    """One sentence: what made ``optimizer``'s gradients non-finite (see the module docs)."""
    weights, state = nonfinite_state(optimizer, name_of)
    if weights or state:
        parts = ([f"weights {listed(weights)}"] if weights else []) + (
            [f"optimizer state {listed(state)}"] if state else []
        )
        return (
            f"Cause: a poisoned state, not the gradients of this batch: the {' and the '.join(parts)} already hold"
            " inf/NaN (loaded from a checkpoint, or written by an update computed from finite gradients, such as"
            " Adam's eps underflowing to 0 in float16). Every later step is skipped too: resume from a finite"
            " checkpoint."
        )
    if loss is not None:
        kind = nonfinite_kind([loss.detach()])
        if kind is not None:
            return (
                f"Cause: the loss was {kind} before loss scaling: it comes from the data or the model, not from an"
                " overflow (a lower loss scale cannot fix it)."
            )
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    kind = nonfinite_kind(grads)
    if kind is None:
        return ""
    if loss is not None:  # under loss scaling, from a finite loss: the scaled backward overflowed
        return (
            f"Cause: an overflow: the loss was finite before loss scaling and its scaled backward pass overflowed"
            f" ({kind} gradients); the grad scaler lowers the loss scale."
        )
    if "NaN" in kind:
        return (
            f"Cause: {kind} gradients: a NaN or inf loss, NaN in the data, an invalid operation (0/0, inf-inf,"
            " sqrt of a negative number) in the forward or backward pass, or an overflow that turned into NaN."
        )
    return "Cause: inf gradients: an overflow or an inf loss (lower the learning rate, or check the data)."
