"""A precision keeps what it declares: after ``convert_module`` the parameters have the dtypes it says it produces.

A plugin's precision replaces a built-in one at ``priority=1`` with one call; if its ``convert_module`` casts to
a dtype the precision does not declare (a "32-true" that makes the model float16), the run would fail much later
with torch's dtype error, or train silently in another precision. The Trainer compares the floating parameters'
dtypes before and after the conversion: only what the conversion changed is the precision's doing, so a model
the user built in another dtype is not blamed on the plugin.
"""

from __future__ import annotations

from typing import Any

import torch

from prec.errors import PluginError
from prec.precision.diagnosis import listed

__all__ = ["check_conversion", "floating_parameter_dtypes"]


def floating_parameter_dtypes(module: torch.nn.Module) -> dict[str, torch.dtype]:
    """The dtype of each floating-point parameter of ``module``, by qualified name."""
    return {name: param.dtype for name, param in module.named_parameters() if param.is_floating_point()}


def check_conversion(precision: Any, module: torch.nn.Module, before: dict[str, torch.dtype], who: str) -> None:
    """Raise :class:`~prec.errors.PluginError` naming ``who`` (the registry's description of the precision) if
    ``convert_module`` gave a floating parameter a dtype the precision does not declare
    (``precision.produced_param_dtypes()``, plus float32 for its ``keep_float32`` modules)."""
    declared = frozenset(precision.produced_param_dtypes())
    policy = getattr(precision, "module_policy", None)
    kept = policy.kept_parameter_names(module) if policy else set()
    wrong = []
    for name, dtype in floating_parameter_dtypes(module).items():
        allowed = {torch.float32} if name in kept else declared
        if dtype not in allowed and before.get(name, dtype) != dtype:
            wrong.append(f"{name} ({before[name]} -> {dtype})")
    if wrong:
        expected = ", ".join(sorted(str(dtype) for dtype in declared))
        raise PluginError(
            f"{who}: convert_module() gave parameters dtypes the precision does not declare: {listed(wrong)};"
            f" {precision.name!r} declares {expected}"
            f"{' (and float32 for its keep_float32 modules)' if kept else ''}. The plugin's conversion is wrong,"
            " or it must declare what it produces (Precision.produced_param_dtypes)."
        )
