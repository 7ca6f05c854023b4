"""Per-module precision policy: "these modules keep float32", by module type or by name pattern.

Normalisation layers and output heads are the usual candidates. A policy is given as the precision option
``keep_float32``: a sequence of module classes (``torch.nn.LayerNorm``) and name patterns (``"head"``,
``"*.norm*"``, matched with :func:`fnmatch.fnmatchcase` against the qualified name from ``named_modules()``). A
matched module keeps its whole subtree in float32:

* under the -true precisions its parameters and buffers stay (or become) float32, floating inputs are cast to
  float32 on the way in and floating outputs back to the precision's dtype on the way out;
* under the -mixed precisions it runs outside autocast, in float32 (inputs cast in, outputs left float32);
* under 32-true it changes nothing (everything already is float32).

The forward of a matched module is wrapped on the instance (not with hooks), so an exception inside it cannot
leave autocast disabled.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from prec.errors import ConfigurationError
from prec.precision.base import apply_to_tensors

__all__ = ["NORM_TYPES", "ModulePolicy", "ModulePolicyMixin", "check_keep_float32", "fsdp_policy_groups"]

#: Every normalisation layer of ``torch.nn``: pass ``keep_float32=prec.precision.NORM_TYPES`` to keep them all.
NORM_TYPES: tuple[type[torch.nn.Module], ...] = tuple(
    getattr(torch.nn, name)
    for name in (
        "LayerNorm",
        "GroupNorm",
        "RMSNorm",
        "LocalResponseNorm",
        "BatchNorm1d",
        "BatchNorm2d",
        "BatchNorm3d",
        "SyncBatchNorm",
        "InstanceNorm1d",
        "InstanceNorm2d",
        "InstanceNorm3d",
    )
    if hasattr(torch.nn, name)
)

_WRAPPED = "__prec_keep_float32__"


def check_keep_float32(value: Any) -> bool:
    """The ``keep_float32`` option's check: a sequence of ``nn.Module`` subclasses and name-pattern strings."""
    if isinstance(value, (str, type)):
        value = (value,)
    if not isinstance(value, Iterable):
        return False
    return all(
        isinstance(item, str) or (isinstance(item, type) and issubclass(item, torch.nn.Module)) for item in value
    )


class ModulePolicy:
    """Which modules of a model keep float32, and how to apply that under a given precision."""

    def __init__(self, keep_float32: Iterable[type[torch.nn.Module] | str] | type[torch.nn.Module] | str = ()) -> None:
        if not check_keep_float32(keep_float32):
            raise ConfigurationError(
                f"keep_float32={keep_float32!r} must be a sequence of torch.nn.Module subclasses and name patterns"
                " (strings such as 'head' or '*.norm*')."
            )
        items = (keep_float32,) if isinstance(keep_float32, (str, type)) else tuple(keep_float32)
        self.types: tuple[type[torch.nn.Module], ...] = tuple(item for item in items if isinstance(item, type))
        self.patterns: tuple[str, ...] = tuple(item for item in items if isinstance(item, str))

    def __bool__(self) -> bool:
        return bool(self.types or self.patterns)

    def __repr__(self) -> str:
        return f"ModulePolicy(keep_float32={[t.__name__ for t in self.types] + list(self.patterns)})"

    def matches(self, name: str, module: torch.nn.Module) -> bool:
        return isinstance(module, self.types) or any(fnmatch.fnmatchcase(name, p) for p in self.patterns)

    def kept_modules(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        """The outermost matched modules (a match inside a matched module is already covered by it)."""
        kept: list[tuple[str, torch.nn.Module]] = []
        for name, module in model.named_modules():
            if any(name.startswith(f"{outer}.") or outer == "" for outer, _ in kept):
                continue
            if self.matches(name, module):
                kept.append((name, module))
        return kept

    def kept_parameter_names(self, model: torch.nn.Module) -> set[str]:
        """Qualified names of the parameters the policy keeps in float32."""
        names: set[str] = set()
        for prefix, module in self.kept_modules(model):
            names.update(f"{prefix}.{name}" if prefix else name for name, _ in module.named_parameters())
        return names

    def apply(
        self,
        model: torch.nn.Module,
        *,
        cast_to: torch.dtype | None,
        autocast_device: str | None = None,
        cast: Callable[[Tensor], Tensor] | None = None,
    ) -> torch.nn.Module:
        """Cast ``model`` to ``cast_to`` (``None``: leave it; ``cast`` replaces the plain floating cast) except the
        kept modules, which become float32 and get a forward that casts inputs in (and outputs back to
        ``cast_to``), outside autocast on ``autocast_device`` if one is given. Idempotent."""
        kept = self.kept_modules(model) if self else []
        kept_ids = {id(module) for _, module in kept}
        if cast_to is not None:
            _cast_except(model, cast or _floating_cast(cast_to), kept_ids)
        for _, module in kept:
            module._apply(_to_float32)
            if not getattr(module.forward, _WRAPPED, False):
                module.forward = _float32_forward(module.forward, cast_to, autocast_device)  # type: ignore[method-assign]
        return model


def _to_float32(tensor: Tensor) -> Tensor:
    return tensor.float() if tensor.is_floating_point() and tensor.dtype != torch.float32 else tensor


def _floating_cast(dtype: torch.dtype) -> Callable[[Tensor], Tensor]:
    # Not module.to(dtype): that casts complex tensors to a real dtype and drops their imaginary part.
    return lambda tensor: tensor.to(dtype) if tensor.is_floating_point() else tensor


def _cast_except(module: torch.nn.Module, cast: Callable[[Tensor], Tensor], kept: set[int]) -> None:
    if id(module) in kept:
        return
    if not kept:
        module._apply(cast)
        return
    module._apply(cast, recurse=False)
    for child in module.children():
        _cast_except(child, cast, kept)


def _float32_forward(
    forward: Callable[..., Any], cast_back: torch.dtype | None, autocast_device: str | None
) -> Callable[..., Any]:
    back = (
        (lambda t: t.to(cast_back) if t.is_floating_point() and t.dtype == torch.float32 else t) if cast_back else None
    )

    @functools.wraps(forward)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        args, kwargs = apply_to_tensors((args, kwargs), _to_float32)
        if autocast_device is not None:
            with torch.autocast(autocast_device, enabled=False):
                output = forward(*args, **kwargs)
        else:
            output = forward(*args, **kwargs)
        return apply_to_tensors(output, back) if back is not None else output

    setattr(wrapped, _WRAPPED, True)
    return wrapped


class ModulePolicyMixin:
    """Gives a precision a :attr:`module_policy` applied in ``convert_module``: for -mixed precisions (weights
    already float32) the kept modules run outside autocast. Mixed in before the precision class."""

    module_policy: ModulePolicy = ModulePolicy()
    device_type: str | None

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        module = super().convert_module(module)  # type: ignore[misc]
        if not self.module_policy:
            return module
        return self.module_policy.apply(module, cast_to=None, autocast_device=self.device_type)


def fsdp_policy_groups(model: torch.nn.Module, precision: Any) -> Iterator[tuple[torch.nn.Module, dict[str, Any]]]:
    """``(module, fully_shard keyword arguments)`` for each module the precision keeps in float32, outermost
    first: shard each with its own ``MixedPrecisionPolicy(param_dtype=float32, reduce_dtype=float32)`` before
    the root, so FSDP2 neither casts their parameters nor reduces their gradients in 16 bit."""
    policy = getattr(precision, "module_policy", None)
    if not policy:
        return
    from torch.distributed.fsdp import MixedPrecisionPolicy

    for _, module in policy.kept_modules(model):
        yield module, {"mp_policy": MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)}
