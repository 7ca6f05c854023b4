"""The options of the built-in precision families and the builders every first-party plugin calls.

One declaration per option, so ``precision_options`` mean the same thing, and fail the same way, on every
accelerator: a plugin lists the options its precision takes and hands the checked options to a builder.
"""

from __future__ import annotations

from typing import Any

import torch

from prec.options import Option, check_options
from prec.precision.base import Precision
from prec.precision.master import MasterWeights, MasterWeightsPrecision
from prec.precision.mixed import SCALER_SETTINGS, MixedPrecision
from prec.precision.policy import ModulePolicy, ModulePolicyMixin, check_keep_float32
from prec.precision.true import Float32Precision, TruePrecision

__all__ = [
    "CACHE_ENABLED",
    "CONVERT_INPUTS_FROM",
    "FLOAT32_OPTIONS",
    "KEEP_FLOAT32",
    "MASTER_WEIGHTS",
    "SCALER",
    "SCALER_SETTINGS",
    "TF32",
    "PolicyMixedPrecision",
    "build_float32",
    "build_mixed",
    "build_true",
    "mixed_options",
    "true_options",
]

KEEP_FLOAT32 = Option(
    "keep_float32",
    "a sequence of torch.nn.Module subclasses and name patterns (e.g. [torch.nn.LayerNorm, 'head'])",
    check_keep_float32,
    (),
)
CONVERT_INPUTS_FROM = Option(
    "convert_inputs_from",
    "a collection of torch dtypes",
    lambda v: v is None or (not isinstance(v, (str, torch.dtype)) and all(isinstance(d, torch.dtype) for d in v)),
)
MASTER_WEIGHTS = Option(
    "master_weights",
    f"None (plain 16-bit weights) or one of {', '.join(map(repr, MasterWeights.spellings()))}",
    lambda v: v is None or isinstance(v, MasterWeights) or v in MasterWeights.spellings(),
    None,
)
TF32 = Option("tf32", "True or False (TF32 matmuls and convolutions on CUDA)", lambda v: isinstance(v, bool), False)
CACHE_ENABLED = Option("cache_enabled", "True or False", lambda v: isinstance(v, bool))
SCALER = Option("scaler", "a torch.amp.GradScaler, True or None")
FLOAT32_OPTIONS: tuple[Option, ...] = (TF32, KEEP_FLOAT32)


def true_options(dtype: torch.dtype) -> tuple[Option, ...]:
    """What a 16-bit true precision takes."""
    return (CONVERT_INPUTS_FROM, MASTER_WEIGHTS, KEEP_FLOAT32)


def mixed_options(*, scaler: bool) -> tuple[Option, ...]:
    """What a mixed precision takes: with a grad scaler its settings, without one only ``cache_enabled``."""
    return (CACHE_ENABLED, KEEP_FLOAT32, *((SCALER, *SCALER_SETTINGS) if scaler else ()))


class PolicyMixedPrecision(ModulePolicyMixin, MixedPrecision):
    """A mixed precision whose ``keep_float32`` modules run outside autocast, in float32."""


def build_true(
    name: str, dtype: torch.dtype, device_type: str | None, options: dict[str, Any], *, base: type = TruePrecision
) -> TruePrecision:
    """bf16-true / 16-true from checked options: plain, or with ``master_weights``. ``base`` lets a plugin add
    a mixin (e.g. an XLA step) in front of either class."""
    options = check_options(name, options, true_options(dtype))
    master_weights = options.pop("master_weights", None)
    cls = base
    if master_weights is not None:
        options["master_weights"] = master_weights
        cls = MasterWeightsPrecision
        if base is not TruePrecision:  # e.g. an XLA step mixin in front: keep it in front
            cls = type(base.__name__.replace("True", "MasterWeights"), (base, MasterWeightsPrecision), {})
    return cls(name, dtype, device_type=device_type, **options)  # type: ignore[no-any-return]


def build_mixed(
    name: str,
    device_type: str,
    dtype: torch.dtype,
    options: dict[str, Any],
    *,
    scaler: bool,
    base: type = MixedPrecision,
    note: str = "",
) -> MixedPrecision:
    """bf16-mixed / 16-mixed from checked options; ``scaler`` says whether a grad scaler is built by default."""
    options = check_options(name, options, mixed_options(scaler=scaler), note=note)
    policy = ModulePolicy(options.pop("keep_float32", ()))
    if scaler:
        options.setdefault("scaler", True)
    cls = base
    if policy:
        cls = PolicyMixedPrecision if base is MixedPrecision else type(base.__name__, (ModulePolicyMixin, base), {})
    precision = cls(name, device_type, dtype, **options)
    if policy:
        precision.module_policy = policy
    return precision  # type: ignore[no-any-return]


def build_float32(options: dict[str, Any], *, base: type = Float32Precision) -> Precision:
    """32-true from checked options (``tf32`` opt-in, ``keep_float32`` accepted and a no-op)."""
    options = check_options("32-true", options, FLOAT32_OPTIONS)
    return base(**options)  # type: ignore[no-any-return]
