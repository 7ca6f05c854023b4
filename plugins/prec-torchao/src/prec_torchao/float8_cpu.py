"""``Float8Linear`` under CPU autocast. Imports torchao: only imported once an fp8 precision was selected on cpu.

torchao's Float8Linear reproduces autocast itself but reads only the CUDA autocast state: under CPU autocast it
would compute in float32, and under ``torch.inference_mode`` (prec's validation) CPU autocast reaches its float8
tensors and fails. This subclass casts the input to the autocast dtype and runs the layer with CPU autocast off,
inside its own ``forward``, so ``torch.compile`` traces it like any other code (a pair of hooks entering and leaving
the autocast context cannot be traced).
"""

from __future__ import annotations

import torch
from torchao.float8.float8_linear import Float8Linear
from typing_extensions import override


class CpuAutocastFloat8Linear(Float8Linear):
    """A Float8Linear that follows CPU autocast the way torchao's follows CUDA autocast."""

    @override
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not torch.is_autocast_enabled("cpu"):
            return super().forward(input)
        dtype = torch.get_autocast_dtype("cpu")
        with torch.autocast("cpu", enabled=False):
            return super().forward(input.to(dtype) if input.is_floating_point() else input)
