"""The Precision hierarchy: one small file per family."""

from prec.precision.base import Precision, apply_to_tensors, default_dtype
from prec.precision.mixed import MixedPrecision
from prec.precision.true import TruePrecision

__all__ = ["MixedPrecision", "Precision", "TruePrecision", "apply_to_tensors", "default_dtype"]
