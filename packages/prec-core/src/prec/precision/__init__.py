"""The Precision hierarchy: one small file per family."""

from prec.precision.base import Precision, apply_to_tensors, default_dtype
from prec.precision.guard import NonFiniteGuard, NonFinitePolicy
from prec.precision.mixed import DEFAULT_MIN_SCALE, SCALER_OPTIONS, MixedPrecision
from prec.precision.true import TruePrecision

__all__ = [
    "DEFAULT_MIN_SCALE",
    "SCALER_OPTIONS",
    "MixedPrecision",
    "NonFiniteGuard",
    "NonFinitePolicy",
    "Precision",
    "TruePrecision",
    "apply_to_tensors",
    "default_dtype",
]
