"""The precisions prec-cuda registers on ``cuda``: factories the registry calls when a Trainer selects a pair.

Each factory checks its options and the device (bfloat16 support) at selection time, so a wrong choice fails in
``Trainer(...)`` with a message that says what to use instead, not later inside a kernel.
"""

from __future__ import annotations

from typing import Any

import torch

from prec.accelerator import Accelerator
from prec.errors import ConfigurationError, UnsupportedPrecisionError
from prec.precision import SCALER_OPTIONS, Precision
from prec.precision.standard import build_float32, build_mixed, build_true

_NO_SCALER = " (bf16-mixed has no grad scaler: bfloat16 has float32's range)"


def require_bf16(name: str, accelerator: Accelerator, instead: str, also: str = "") -> None:
    """Raise :class:`UnsupportedPrecisionError` on a GPU without native bfloat16 (before Ampere)."""
    bf16_supported = getattr(accelerator, "bf16_supported", None)
    if bf16_supported is None or bf16_supported():
        return
    describe = getattr(accelerator, "device_description", None)
    device = describe() if describe is not None else "this GPU"
    raise UnsupportedPrecisionError(
        f"precision={name!r} needs a GPU that computes bfloat16 natively (compute capability 8.0+, Ampere or"
        f" newer), but {device} does not. Use precision={instead!r}" + (f" (or {also!r})" if also else "") + " instead."
    )


def half_mixed(accelerator: Accelerator, **options: Any) -> Precision:
    """16-mixed: float16 autocast and a dynamic grad scaler (``init_scale``, ``growth_interval`` … configure it,
    or pass a ready ``scaler=torch.amp.GradScaler("cuda", ...)``)."""
    if "scaler" in options and (options["scaler"] is None or options["scaler"] is False):
        raise ConfigurationError(
            "16-mixed needs a grad scaler: float16 gradients underflow to zero without loss scaling. For mixed"
            " precision without a scaler use precision='bf16-mixed' (on GPUs with bfloat16)."
        )
    return build_mixed("16-mixed", "cuda", torch.float16, options, scaler=True)


def bf16_mixed(accelerator: Accelerator, **options: Any) -> Precision:
    """bf16-mixed: bfloat16 autocast, no scaler (bfloat16 has float32's range)."""
    note = _NO_SCALER if set(options) & {*SCALER_OPTIONS, "scaler"} else ""
    precision = build_mixed("bf16-mixed", "cuda", torch.bfloat16, options, scaler=False, note=note)
    require_bf16("bf16-mixed", accelerator, "16-mixed")
    return precision


def bf16_true(accelerator: Accelerator, **options: Any) -> Precision:
    """bf16-true: bfloat16 weights and math; ``Trainer.init_module`` builds the weights on the GPU in bfloat16."""
    precision = build_true("bf16-true", torch.bfloat16, "cuda", options)
    require_bf16("bf16-true", accelerator, "16-true", also="16-mixed")
    return precision


def half_true(accelerator: Accelerator, **options: Any) -> Precision:
    """16-true: float16 weights and math (half the memory; can be unstable without loss scaling)."""
    return build_true("16-true", torch.float16, "cuda", options)


def full(accelerator: Accelerator, **options: Any) -> Precision:
    """32-true: float32 weights and math, TF32 off for the run unless ``tf32=True``."""
    return build_float32(options)


#: (name, factory, description) for every precision prec-cuda registers on cuda.
CUDA_PRECISIONS = (
    ("16-mixed", half_mixed, "float32 weights, float16 autocast, dynamic grad scaler"),
    ("bf16-mixed", bf16_mixed, "float32 weights, bfloat16 autocast (Ampere or newer)"),
    ("16-true", half_true, "float16 weights and math; master_weights='fp32' keeps small updates"),
    (
        "bf16-true",
        bf16_true,
        "bfloat16 weights and math (Ampere or newer); master_weights='fp32'|'kahan'|'stochastic' keeps small updates",
    ),
    ("32-true", full, "float32 weights and math (TF32 off; opt in with precision_options={'tf32': True})"),
)
