"""Which modules ``load_from_checkpoint(dtype=/precision=)`` keeps in float32.

A 16-bit run with ``precision_options={"keep_float32": [...]}`` (or a measured plan's) trained those modules in
float32 and stores them so; building the loaded model in bfloat16 would round them silently, and the outputs would
no longer be the trained model's. The checkpoint does not store the option, but its tensors' dtypes say it: while
the run's weights were 16-bit, a module whose every floating tensor is float32 was kept. The loaded model keeps
those modules exactly as the precision did (:class:`~prec.precision.policy.ModulePolicy`: float32 weights, inputs
cast in, outputs cast back). An explicit ``keep_float32=`` replaces what the checkpoint says; ``()`` casts all.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from prec.checkpoint.effective import saved_param_dtype
from prec.errors import ConfigurationError
from prec.numerics.plan import exact_pattern
from prec.precision.policy import ModulePolicy

__all__ = ["KeepFloat32", "apply_policy", "explicit_policy", "log_recorded", "recorded_policy"]

#: What ``keep_float32=`` takes: module classes and name patterns, as the precision option does.
KeepFloat32 = Iterable[type[torch.nn.Module] | str] | type[torch.nn.Module] | str
_SIXTEEN_BIT = (torch.float16, torch.bfloat16)


def explicit_policy(keep_float32: Any) -> ModulePolicy:
    """``keep_float32=`` checked as the precision option is, the error naming ``load_from_checkpoint``."""
    try:
        return ModulePolicy(keep_float32)
    except ConfigurationError as error:
        raise ConfigurationError(f"load_from_checkpoint(): {error}") from error


def recorded_policy(model: torch.nn.Module, checkpoint: Mapping[str, Any], target: torch.dtype) -> ModulePolicy:
    """The modules of ``model`` a 16-bit run kept in float32: every floating tensor under them is float32 in the
    checkpoint. Empty unless ``target`` is 16-bit, and for a run whose weights were not (its float32 tensors were
    kept by nobody): the run's weight dtype is the checkpoint's metadata, or any 16-bit tensor it stores."""
    if target not in _SIXTEEN_BIT:
        return ModulePolicy()
    state: Mapping[str, Any] = checkpoint.get("state_dict") or {}
    dtypes = {
        name: value.dtype
        for name, value in state.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point()
    }
    saved = saved_param_dtype(checkpoint)
    if saved not in _SIXTEEN_BIT and (saved is not None or not any(d in _SIXTEEN_BIT for d in dtypes.values())):
        return ModulePolicy()
    all_float32: dict[str, bool] = {}  # module name (every prefix of a tensor's name, the root "") -> verdict
    for name, dtype in dtypes.items():
        parts = name.split(".")
        for end in range(len(parts)):
            prefix = ".".join(parts[:end])
            all_float32[prefix] = all_float32.get(prefix, True) and dtype == torch.float32
    return ModulePolicy([exact_pattern(name) for name, _ in model.named_modules() if all_float32.get(name)])


def apply_policy(model: torch.nn.Module, policy: ModulePolicy, target: torch.dtype) -> list[str]:
    """Keep ``policy``'s modules float32 in a model built in ``target`` (its other tensors left as built), with the
    forward the precision gives them; the kept modules' names, outermost only."""
    if not policy:
        return []
    policy.apply(model, cast_to=target, cast=_as_built)
    return [name for name, _ in policy.kept_modules(model)]


def log_recorded(names: list[str], target: torch.dtype) -> None:
    """Say once which modules stay float32 because the checkpoint stores them so."""
    if names:
        shown = ", ".join(repr(name) if name else "(the whole model)" for name in names)
        logging.getLogger("prec").info(
            "load_from_checkpoint: %d module(s) stay float32 in the %s model, as the checkpoint stores them (the"
            " run's keep_float32): %s. Pass keep_float32=() to cast them too.",
            len(names),
            target,
            shown,
        )


def _as_built(tensor: torch.Tensor) -> torch.Tensor:
    return tensor
