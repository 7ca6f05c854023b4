"""prec-torchao: low-precision matmuls for training through torchao, as four new prec precision names.

``fp8-mixed``: float32 master weights and optimizer state, bfloat16 autocast, float8 matmuls in the Linear layers
it converts (torchao's ``Float8Linear``). ``fp8-bf16-true``: the same matmuls on bf16-true (bfloat16 weights and
optimizer state). On ``cuda`` they need compute capability 8.9+; on ``cpu`` torchao emulates the fp8 numerics
(slowly), for testing. ``mxfp8-mixed``: fp8-mixed with MXFP8 matmuls (one scale per 32 elements; compute capability
10.0+, emulated on cpu). ``int8-mixed``: bf16-mixed with dynamic int8 matmuls, on cpu and cuda::

    prec.Trainer(accelerator="cpu", precision="fp8-mixed", precision_options={"emulate": True})

Registering imports neither torchao nor CUDA (``prec list`` stays fast). Without a usable torchao the names are
still registered, their description says why they cannot run, and selecting one raises
:class:`prec.UnsupportedPrecisionError` with the reason; :func:`unavailable_reason` says it without a Trainer.
"""

from __future__ import annotations

from prec import RegisterPrecision, hookimpl
from prec_torchao.availability import (
    MIN_MX_CAPABILITY,
    load_float8,
    mx_gpu_reason,
    mx_unavailable_reason,
    torchao_version,
    unavailable_reason,
)
from prec_torchao.conversion import RECIPES, ConversionReport
from prec_torchao.layers import Int8TrainingLinear, MXFP8TrainingLinear
from prec_torchao.lowbit import MX_RECIPES, Int8MixedPrecision, MXFP8MixedPrecision, int8_mixed, mxfp8_mixed
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
    "MIN_MX_CAPABILITY",
    "MX_RECIPES",
    "RECIPES",
    "ConversionReport",
    "Float8MixedPrecision",
    "Float8TruePrecision",
    "Int8MixedPrecision",
    "Int8TrainingLinear",
    "MXFP8MixedPrecision",
    "MXFP8TrainingLinear",
    "cuda_capability",
    "fp8_bf16_true",
    "fp8_mixed",
    "int8_mixed",
    "load_float8",
    "mx_gpu_reason",
    "mx_unavailable_reason",
    "mxfp8_mixed",
    "prec_register_precisions",
    "torchao_version",
    "unavailable_reason",
]

_DESCRIPTIONS = {
    ("fp8-mixed", "cuda"): "float32 weights, bf16 autocast, fp8 Linear matmuls via torchao (compute capability 8.9+)",
    ("fp8-bf16-true", "cuda"): "bf16 weights and math, fp8 Linear matmuls via torchao (compute capability 8.9+)",
    ("fp8-mixed", "cpu"): "float32 weights, bf16 autocast, emulated fp8 Linear matmuls via torchao (slow; testing)",
    ("fp8-bf16-true", "cpu"): "bf16 weights and math, emulated fp8 Linear matmuls via torchao (slow; testing)",
    ("mxfp8-mixed", "cuda"): "float32 weights, bf16 autocast, MXFP8 Linear matmuls via torchao (compute capability"
    " 10.0+, Blackwell)",
    ("mxfp8-mixed", "cpu"): "float32 weights, bf16 autocast, emulated MXFP8 Linear matmuls via torchao (slow; testing)",
    ("int8-mixed", "cuda"): "float32 weights, bf16 autocast, dynamic int8 Linear matmuls via torchao",
    ("int8-mixed", "cpu"): "float32 weights, bf16 autocast, dynamic int8 Linear matmuls via torchao (torch._int_mm)",
}
_FACTORIES = {
    "fp8-mixed": fp8_mixed,
    "fp8-bf16-true": fp8_bf16_true,
    "mxfp8-mixed": mxfp8_mixed,
    "int8-mixed": int8_mixed,
}


@hookimpl
def prec_register_precisions(register: RegisterPrecision) -> None:
    """Every name on cpu and cuda, always; where it cannot run, its description says why (``prec list --json``)."""
    reason = unavailable_reason()
    mx_reason = mx_unavailable_reason()
    for (name, accelerator), description in _DESCRIPTIONS.items():
        why = mx_reason if name.startswith("mxfp8") else reason
        if why is not None:
            description = f"unavailable: {why}"
        register(name, accelerator, _FACTORIES[name], description=description)
