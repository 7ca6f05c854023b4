"""prec-torchao: fp8 training through torchao's ``Float8Linear``, as two new prec precision names.

``fp8-mixed``: float32 master weights and optimizer state, bfloat16 autocast, float8 matmuls in the Linear layers
it converts. ``fp8-bf16-true``: the same matmuls on bf16-true (bfloat16 weights and optimizer state). On ``cuda``
they need compute capability 8.9+; on ``cpu`` torchao emulates the fp8 numerics (slowly), for testing::

    prec.Trainer(accelerator="cpu", precision="fp8-mixed", precision_options={"emulate": True})

Registering imports neither torchao nor CUDA (``prec list`` stays fast). Without a usable torchao the names are
still registered, their description says why they cannot run, and selecting one raises
:class:`prec.UnsupportedPrecisionError` with the reason; :func:`unavailable_reason` says it without a Trainer.
"""

from __future__ import annotations

from prec import RegisterPrecision, hookimpl
from prec_torchao.availability import load_float8, torchao_version, unavailable_reason
from prec_torchao.conversion import RECIPES, ConversionReport
from prec_torchao.precisions import (
    MIN_CAPABILITY,
    Float8MixedPrecision,
    Float8TruePrecision,
    cuda_capability,
    fp8_bf16_true,
    fp8_mixed,
)

__all__ = [
    "MIN_CAPABILITY",
    "RECIPES",
    "ConversionReport",
    "Float8MixedPrecision",
    "Float8TruePrecision",
    "cuda_capability",
    "fp8_bf16_true",
    "fp8_mixed",
    "load_float8",
    "prec_register_precisions",
    "torchao_version",
    "unavailable_reason",
]

_DESCRIPTIONS = {
    ("fp8-mixed", "cuda"): "float32 weights, bf16 autocast, fp8 Linear matmuls via torchao (compute capability 8.9+)",
    ("fp8-bf16-true", "cuda"): "bf16 weights and math, fp8 Linear matmuls via torchao (compute capability 8.9+)",
    ("fp8-mixed", "cpu"): "float32 weights, bf16 autocast, emulated fp8 Linear matmuls via torchao (slow; testing)",
    ("fp8-bf16-true", "cpu"): "bf16 weights and math, emulated fp8 Linear matmuls via torchao (slow; testing)",
}
_FACTORIES = {"fp8-mixed": fp8_mixed, "fp8-bf16-true": fp8_bf16_true}


@hookimpl
def prec_register_precisions(register: RegisterPrecision) -> None:
    reason = unavailable_reason()
    for (name, accelerator), description in _DESCRIPTIONS.items():
        if reason is not None:
            description = f"unavailable: {reason}"
        register(name, accelerator, _FACTORIES[name], description=description)
