"""prec-xla: the ``xla`` accelerator (alias ``tpu``) and the precisions that run on it.

Registers ``xla`` and, on it, ``32-true``, ``bf16-mixed`` (``torch.autocast("xla", dtype=torch.bfloat16)``),
``bf16-true`` and ``16-true``, plus the ``single_xla`` strategy. ``16-mixed`` is absent because TPUs compute in
bfloat16 (float16 autocast would need loss scaling for no gain) and ``64-true`` because TPUs have no float64
arithmetic; prec's registry explains both when they are asked for.

Importing this module, listing plugins and training on another accelerator never import torch_xla: only using
the xla accelerator does (see :mod:`prec_xla.detect` for when it counts as available).
"""

from __future__ import annotations

from typing import Any

import prec
from prec_xla.accelerator import XLAAccelerator
from prec_xla.detect import TESTED_RELEASE
from prec_xla.precision import XLAMixedPrecision, XLAPrecision, XLATruePrecision, bf16_mixed, bf16_true, full, half_true
from prec_xla.strategy import XLASingleStrategy, to_cpu

__all__ = [
    "TESTED_RELEASE",
    "XLAAccelerator",
    "XLAMixedPrecision",
    "XLAPrecision",
    "XLASingleStrategy",
    "XLATruePrecision",
    "to_cpu",
]


@prec.hookimpl
def prec_register_accelerators(register: Any) -> None:
    register(XLAAccelerator)


@prec.hookimpl
def prec_register_precisions(register: Any) -> None:
    register("32-true", "xla", full, description="float32 weights and math")
    register("bf16-mixed", "xla", bf16_mixed, description="float32 weights, bfloat16 autocast")
    register("bf16-true", "xla", bf16_true, description="bfloat16 weights and math")
    register("16-true", "xla", half_true, description="float16 weights and math")


@prec.hookimpl
def prec_register_strategies(register: Any) -> None:
    register(
        "single_xla",
        XLASingleStrategy,
        accelerators=["xla"],
        description="one process on one XLA device: no_grad evaluation, checkpoints of CPU tensors",
    )
