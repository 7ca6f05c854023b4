"""True precisions: weights, activations and gradients all in one dtype (16-true, bf16-true)."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor

from prec.precision.base import Precision, apply_to_tensors, default_dtype, to_float32


class TruePrecision(Precision):
    """Everything in ``dtype``: modules are cast, new tensors default to it, float inputs are cast to it.

    ``convert_inputs_from`` names the input dtypes that are cast (by default every floating dtype other than
    ``dtype``); integer tensors are never touched.
    """

    def __init__(
        self,
        name: str,
        dtype: torch.dtype,
        *,
        device_type: str | None = None,
        convert_inputs_from: Iterable[torch.dtype] | None = None,
    ) -> None:
        self.name = name
        self.param_dtype = dtype
        self.compute_dtype = dtype
        self.device_type = device_type
        floating = {torch.float16, torch.bfloat16, torch.float32, torch.float64}
        self._convert_from = frozenset(convert_inputs_from if convert_inputs_from is not None else floating - {dtype})

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        # Not module.to(dtype): that casts complex tensors to a real dtype and drops their imaginary part.
        dtype = self.param_dtype
        return module._apply(lambda tensor: tensor.to(dtype) if tensor.is_floating_point() else tensor)

    def tensor_init_context(self) -> AbstractContextManager[None]:
        return default_dtype(self.param_dtype)

    def forward_context(self) -> AbstractContextManager[None]:
        return default_dtype(self.param_dtype)

    def convert_input(self, data: Any) -> Any:
        return apply_to_tensors(data, self._cast_input)

    def convert_output(self, data: Any) -> Any:
        return apply_to_tensors(data, to_float32)

    def _cast_input(self, tensor: Tensor) -> Tensor:
        return tensor.to(self.param_dtype) if tensor.dtype in self._convert_from else tensor

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dtype={self.param_dtype})"
