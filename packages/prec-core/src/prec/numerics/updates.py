"""The lost-update ratio: how much of the optimizer's intended update rounding to the weight's dtype discarded.

For one parameter, with ``d_int`` the update the optimizer would have applied in float32 and ``d_act`` the change
that actually happened::

    ratio = 1 - <d_act, d_int> / <d_int, d_int>

0 means the whole update landed, 1 means the weight did not move (a bfloat16 weight of 1.0 ignores any update
below 2**-9). The projection makes it robust to stochastic rounding: rounding noise is orthogonal to ``d_int`` on
average, so an unbiased rounding scores near 0 even though single elements move by a whole ulp or not at all.
A module's ratio aggregates its parameters: ``1 - sum <d_act, d_int> / sum <d_int, d_int>``. A module whose
optimizer intended no change scores 0 (nothing was lost).

``d_int`` is computed optimizer-agnostically (:func:`intended_updates`): float32 clones of the parameters (with
their gradients cast to float32) are stepped by a fresh instance of the same optimizer class, built from the real
one's ``defaults`` and param-group hyper-parameters and loaded with a float32 copy of its state. The real
optimizer is not touched. Call it after the gradients are final (unscaled, clipped) and before the real step.

Under prec's master weights a 16-bit parameter is worth more than its 16-bit value; pass the precision's
``effective_weight`` (``MasterWeightsPrecision.effective_weight``) so that ``d_act`` is the change of that value.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from prec.errors import ConfigurationError

__all__ = ["EffectiveWeight", "intended_updates", "lost_update_ratio", "update_products"]

#: ``effective_weight(param) -> float32 tensor``: what a parameter is worth (its own value by default).
EffectiveWeight = Callable[[Tensor], Tensor]


def float_value(param: Tensor, effective_weight: EffectiveWeight | None = None) -> Tensor:
    """A float32 (float64 stays float64) copy of what ``param`` is worth now."""
    with torch.no_grad():
        value = effective_weight(param) if effective_weight is not None else param.detach()
        if value.dtype != torch.float64:
            value = value.float()
        return value.detach().clone()


def _state_copy(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, Tensor):
        copied = value.detach().clone()
        return copied.to(dtype) if copied.is_floating_point() and copied.dtype != torch.float64 else copied
    if isinstance(value, dict):
        return {key: _state_copy(item, dtype) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_state_copy(item, dtype) for item in value)
    return value


def constructor_defaults(optimizer: Optimizer) -> dict[str, Any]:
    """The optimizer's ``defaults`` its constructor accepts (AdamW keeps ``decoupled_weight_decay`` there, which
    its constructor does not take). The param groups carry every hyper-parameter anyway."""
    parameters = inspect.signature(type(optimizer).__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(optimizer.defaults)
    return {key: value for key, value in optimizer.defaults.items() if key in parameters}


def intended_updates(
    optimizer: Optimizer,
    params: Iterable[Tensor] | None = None,
    *,
    effective_weight: EffectiveWeight | None = None,
) -> dict[Tensor, Tensor]:
    """``{param: d_int}`` for the optimizer's parameters that have a gradient (restricted to ``params`` if given).

    The keys are the optimizer's own parameter objects. Nothing of the real optimizer or model changes."""
    wanted = None if params is None else {id(p) for p in params}
    groups: list[dict[str, Any]] = []
    pairs: list[tuple[Tensor, Tensor, Tensor]] = []  # (original, clone, value before)
    for group in optimizer.param_groups:
        clones: list[Tensor] = []
        for param in group["params"]:
            if param.grad is None or (wanted is not None and id(param) not in wanted):
                continue
            start = float_value(param, effective_weight)
            clone = torch.nn.Parameter(start.clone())
            clone.grad = param.grad.detach().to(start.dtype).clone()
            clones.append(clone)
            pairs.append((param, clone, start))
        if clones:
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": clones})
    if not pairs:
        return {}
    try:
        shadow = type(optimizer)(groups, **constructor_defaults(optimizer))
    except Exception as error:  # noqa: BLE001 - any constructor failure is reported the same way
        raise ConfigurationError(
            f"optimizer: cannot measure intended updates of {type(optimizer).__name__}: building a float32 copy"
            f" from its defaults failed ({error}). The lost-update ratio needs an optimizer whose constructor"
            " accepts its own `defaults` as keyword arguments, as torch.optim's optimizers do."
        ) from error
    for param, clone, _ in pairs:
        if param in optimizer.state and optimizer.state[param]:
            shadow.state[clone] = _state_copy(dict(optimizer.state[param]), clone.dtype)
    try:
        shadow.step()
    except TypeError as error:  # LBFGS and other optimizers whose step needs a closure
        raise ConfigurationError(
            f"optimizer: cannot measure intended updates of {type(optimizer).__name__}: its step() failed without"
            f" a closure ({error}). The lost-update ratio supports optimizers that step from gradients alone."
        ) from error
    return {param: (clone.detach() - start) for param, clone, start in pairs}


def update_products(before: Tensor, after: Tensor, intended: Tensor) -> Tensor:
    """``[<d_act, d_int>, <d_int, d_int>]`` as a float64 vector on the device (no synchronisation)."""
    actual = (after - before).to(torch.float64).flatten()
    wanted = intended.to(torch.float64).flatten()
    return torch.stack([torch.dot(actual, wanted), torch.dot(wanted, wanted)])


def lost_update_ratio(products: Tensor | tuple[float, float]) -> float:
    """The ratio from summed ``[<d_act, d_int>, <d_int, d_int>]`` (synchronises if given a device tensor)."""
    dot, norm = (float(value) for value in products)
    if norm == 0.0:
        return 0.0
    return 1.0 - dot / norm
