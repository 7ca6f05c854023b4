"""The Precision hierarchy: one small file per family."""

from prec.precision.base import Precision, apply_to_tensors, default_dtype
from prec.precision.guard import NonFiniteGuard, NonFinitePolicy
from prec.precision.master import MASTER_WEIGHT_MODES, MasterWeights, MasterWeightsPrecision, stochastic_round
from prec.precision.mixed import DEFAULT_MIN_SCALE, SCALER_OPTIONS, MixedPrecision
from prec.precision.policy import NORM_TYPES, ModulePolicy, ModulePolicyMixin, fsdp_policy_groups
from prec.precision.true import Float32Precision, TruePrecision

__all__ = [
    "DEFAULT_MIN_SCALE",
    "MASTER_WEIGHT_MODES",
    "NORM_TYPES",
    "SCALER_OPTIONS",
    "Float32Precision",
    "MasterWeights",
    "MasterWeightsPrecision",
    "MixedPrecision",
    "ModulePolicy",
    "ModulePolicyMixin",
    "NonFiniteGuard",
    "NonFinitePolicy",
    "Precision",
    "TruePrecision",
    "apply_to_tensors",
    "default_dtype",
    "fsdp_policy_groups",
    "stochastic_round",
]
