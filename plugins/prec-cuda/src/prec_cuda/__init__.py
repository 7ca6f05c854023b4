"""prec-cuda: the CUDA accelerator (``cuda``, alias ``gpu``) and the precisions that run on it.

Registers ``16-mixed`` (float16 autocast with a dynamic grad scaler), ``bf16-mixed``, ``16-true``, ``bf16-true``
and ``32-true`` on ``cuda``. Registering touches no device: ``prec list`` stays fast and fork-safe. ``64-true``
comes from ``prec-double``.
"""

from __future__ import annotations

from typing import Any

import prec
from prec_cuda.accelerator import CUDAAccelerator, cuda_probe
from prec_cuda.precisions import CUDA_PRECISIONS, bf16_mixed, bf16_true, full, half_mixed, half_true

__all__ = ["CUDAAccelerator", "bf16_mixed", "bf16_true", "cuda_probe", "full", "half_mixed", "half_true"]


@prec.hookimpl
def prec_register_accelerators(register: Any) -> None:
    register(CUDAAccelerator)


@prec.hookimpl
def prec_register_precisions(register: Any) -> None:
    for name, factory, description in CUDA_PRECISIONS:
        register(name, "cuda", factory, description=description)
