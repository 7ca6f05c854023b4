"""The float32 values a 16-bit checkpoint's weights are worth.

A checkpoint of bf16-true (or 16-true) with ``master_weights`` stores 16-bit weights in ``state_dict`` and what
rounding dropped in ``precision_state``: the float32 copies (``"masters"``, mode ``"fp32"``) or the compensation
buffers (``"compensation"``, mode ``"kahan"``), one list per optimizer in the order its ``param_groups`` hold the
16-bit parameters. Those lists carry no names, so this module pairs them with ``state_dict`` names: in the order
the optimizer's state names them (torch >= 2.6 ``param_names``, when it was built from ``named_parameters()``),
else in the order given by the caller (the model's parameters) or the ``state_dict``'s own order. Each pairing is
checked against the stored weight (a float32 copy rounds to it exactly; a compensation is below one unit in its
last place); a pairing that fails is replaced by the only candidate that passes, and where none or several pass
the reader gets a :class:`~prec.errors.CheckpointError`, never wrong values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from prec.errors import CheckpointError

__all__ = ["cast_state", "effective_float32", "saved_param_dtype", "tracked_values"]

_MODES_WITH_VALUES = {"fp32": "masters", "kahan": "compensation"}


def saved_param_dtype(checkpoint: Mapping[str, Any]) -> torch.dtype | None:
    """The parameter dtype the checkpoint's precision trained with (``None`` when it does not say)."""
    text = (checkpoint.get("precision") or {}).get("param_dtype")
    dtype = getattr(torch, str(text).removeprefix("torch."), None) if text else None
    return dtype if isinstance(dtype, torch.dtype) else None


def tracked_values(checkpoint: Mapping[str, Any], parameter_order: Sequence[str] | None = None) -> dict[str, Tensor]:
    """``{parameter name: float32 value}`` for the parameters the precision state holds more precision for (empty
    for checkpoints without ``master_weights`` ``"fp32"``/``"kahan"``)."""
    state = checkpoint.get("precision_state") or {}
    mode = state.get("master_weights") if isinstance(state, Mapping) else None
    key = _MODES_WITH_VALUES.get(str(mode))
    stored = state.get(key) if key else None
    if not stored:
        return {}
    weights: Mapping[str, Any] = checkpoint["state_dict"]
    dtype = saved_param_dtype(checkpoint)
    names = _candidate_names(checkpoint, weights, dtype, parameter_order)
    values: list[Tensor] = [value for group in stored for value in group]
    chosen: dict[str, Tensor] = {}
    unused = list(names)
    for position, value in enumerate(values):
        preferred = names[position] if position < len(names) else None
        name = _pair(key, value, weights, preferred, unused)
        unused.remove(name)
        weight = weights[name]
        chosen[name] = value.float() if key == "masters" else weight.float() + value.float()
    return chosen


def effective_float32(checkpoint: Mapping[str, Any], parameter_order: Sequence[str] | None = None) -> dict[str, Tensor]:
    """The checkpoint's ``state_dict`` with every floating tensor in float32 (float64 and complex ones kept), the
    weights the precision state refines at their full value (:func:`tracked_values`)."""
    tracked = tracked_values(checkpoint, parameter_order)
    result: dict[str, Tensor] = {}
    for name, value in checkpoint["state_dict"].items():
        if name in tracked:
            result[name] = tracked[name]
        elif isinstance(value, Tensor) and value.is_floating_point() and value.dtype != torch.float64:
            result[name] = value.float()
        else:
            result[name] = value
    return result


def cast_state(
    checkpoint: dict[str, Any], dtypes: Mapping[str, torch.dtype], parameter_order: Sequence[str] | None = None
) -> dict[str, Tensor]:
    """``checkpoint["state_dict"]``, each floating tensor named in ``dtypes`` cast once to its dtype: from the
    refined float32 value (:func:`tracked_values`) where the dtype differs from the one training kept. The dict is
    updated in place, so each stored tensor is released as its cast replaces it and memory peaks at the stored
    tensors plus one cast, never at a float32 copy of the model."""
    state: dict[str, Any] = checkpoint["state_dict"]
    saved = saved_param_dtype(checkpoint)
    refine = saved is not None and any(dtype != saved for dtype in dtypes.values())
    refined = tracked_values(checkpoint, parameter_order) if refine else {}
    for name in list(state):
        value, target = state[name], dtypes.get(name)
        if target is None or not isinstance(value, Tensor) or not value.is_floating_point():
            continue
        source = refined.pop(name, value) if target != value.dtype else value
        state[name] = source.to(target)
        del value, source
    return state


def _candidate_names(
    checkpoint: Mapping[str, Any],
    weights: Mapping[str, Any],
    dtype: torch.dtype | None,
    parameter_order: Sequence[str] | None,
) -> list[str]:
    """The 16-bit tensors' names, in the order the optimizers most likely held them."""
    named = [
        name
        for optimizer in checkpoint.get("optimizer_states") or ()
        for group in (optimizer.get("param_groups") or () if isinstance(optimizer, Mapping) else ())
        for name in group.get("param_names") or ()
    ]
    order = named or list(parameter_order or weights)
    return [
        name
        for name in order
        if isinstance(weights.get(name), Tensor) and (dtype is None or weights[name].dtype == dtype)
    ]


def _pair(key: str, value: Tensor, weights: Mapping[str, Any], preferred: str | None, unused: list[str]) -> str:
    if preferred is not None and preferred in unused and _fits(key, value, weights[preferred]):
        return preferred
    fitting = [name for name in unused if _fits(key, value, weights[name])]
    if len(fitting) == 1:
        return fitting[0]
    what = "float32 copy" if key == "masters" else "compensation buffer"
    found = "no" if not fitting else f"{len(fitting)} ({', '.join(fitting[:4])})"
    raise CheckpointError(
        f"the checkpoint's precision state holds a {what} of shape {tuple(value.shape)} that fits {found} of its"
        f" 16-bit weights in state_dict{f' (expected {preferred!r})' if preferred else ''}: it cannot be paired by"
        " name. Build the optimizer from model.named_parameters() so checkpoints name its parameters, or load the"
        " 16-bit weights as they are."
    )


def _fits(key: str, value: Tensor, weight: Tensor) -> bool:
    """A float32 copy rounds to its stored weight; a compensation is below one unit in the weight's last place."""
    if value.shape != weight.shape:
        return False
    if key == "masters":
        return _same_with_nan(value.to(weight.dtype), weight)
    info = torch.finfo(weight.dtype)
    bound = weight.float().abs() * info.eps + info.tiny
    return bool((value.float().abs() <= bound).all())


def _same_with_nan(left: Tensor, right: Tensor) -> bool:
    return bool(((left == right) | (left.isnan() & right.isnan())).all())
