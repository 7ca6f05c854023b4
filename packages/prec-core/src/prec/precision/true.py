"""True precisions: weights, activations and gradients all in one dtype (32-true, 16-true, bf16-true)."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from prec.errors import ConfigurationError
from prec.precision.base import Precision, apply_to_tensors, default_dtype, to_float32
from prec.precision.policy import ModulePolicy
from prec.precision.tf32 import Float32Flags

__all__ = ["Float32Precision", "TruePrecision"]


class TruePrecision(Precision):
    """Everything in ``dtype``: modules are cast, new tensors default to it, float inputs are cast to it.

    ``convert_inputs_from`` names the input dtypes that are cast (by default every floating dtype other than
    ``dtype``); integer tensors are never touched. ``keep_float32`` names modules (types, name patterns) that
    stay in float32 (see :mod:`prec.precision.policy`).
    """

    def __init__(
        self,
        name: str,
        dtype: torch.dtype,
        *,
        device_type: str | None = None,
        convert_inputs_from: Iterable[torch.dtype] | None = None,
        keep_float32: Iterable[type[torch.nn.Module] | str] = (),
    ) -> None:
        self.name = name
        self.param_dtype = dtype
        self.compute_dtype = dtype
        self.device_type = device_type
        self.module_policy = ModulePolicy(keep_float32)
        floating = {torch.float16, torch.bfloat16, torch.float32, torch.float64}
        self._convert_from = frozenset(convert_inputs_from if convert_inputs_from is not None else floating - {dtype})

    @override
    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return self.module_policy.apply(module, cast_to=self.param_dtype)

    @override
    def setup_optimizer(self, optimizer: Optimizer) -> None:
        """Refuse an ``eps`` that is 0 in the weights' dtype (Adam's default 1e-8 in float16): the optimizer state
        lives in that dtype, so ``sqrt(v) + eps`` is 0 wherever ``v`` underflows, and a finite gradient writes
        NaN into the weights (which the non-finite guard, checking gradients, cannot see coming)."""
        super().setup_optimizer(optimizer)
        for index, group in enumerate(optimizer.param_groups):
            eps = group.get("eps")
            dtypes = {param.dtype for param in group["params"] if param.is_floating_point()}
            if not isinstance(eps, float) or eps <= 0:
                continue
            vanishing = sorted(str(dtype) for dtype in dtypes if torch.tensor(eps, dtype=dtype).item() == 0)
            if vanishing:
                raise ConfigurationError(
                    f"{self.name}: {type(optimizer).__name__}(eps={eps}) in param group {index} is 0 in"
                    f" {', '.join(vanishing)}, where {self.name} keeps the weights and the optimizer state: the"
                    " first update from a small but finite gradient divides by zero and writes NaN into the"
                    " weights. Pass eps >= 1e-7 (float16's smallest step above 0 is 6e-8), or"
                    " precision_options={'master_weights': 'fp32'} (the optimizer then runs in float32)."
                )

    @override
    def tensor_init_context(self) -> AbstractContextManager[None]:
        return default_dtype(self.param_dtype)

    @override
    def forward_context(self) -> AbstractContextManager[None]:
        return default_dtype(self.param_dtype)

    @property
    def convert_inputs_from(self) -> frozenset[torch.dtype]:
        """The input dtypes :meth:`convert_input` casts."""
        return self._convert_from

    @override
    def convert_input(self, data: Any) -> Any:
        return apply_to_tensors(data, self.cast_input_tensor)

    @override
    def convert_output(self, data: Any) -> Any:
        return apply_to_tensors(data, to_float32)

    def cast_input_tensor(self, tensor: Tensor) -> Tensor:
        """Cast one input tensor (what :meth:`convert_input` applies to each); override to change the rule."""
        return tensor.to(self.param_dtype) if tensor.dtype in self._convert_from else tensor

    def __repr__(self) -> str:
        policy = f", {self.module_policy!r}" if self.module_policy else ""
        return f"{type(self).__name__}(name={self.name!r}, dtype={self.param_dtype}{policy})"


class Float32Precision(Precision):
    """32-true that means float32: TF32 matmuls and convolutions are switched off for the run (torch lets cuDNN
    convolutions use TF32 by default) and the previous settings restored at :meth:`teardown`.

    ``tf32=True`` is the explicit opt-in: float32 storage, TF32 tensor-core math on CUDA (about 10 mantissa
    bits). ``keep_float32`` is accepted for symmetry with the other precisions and changes nothing here.
    """

    def __init__(self, *, tf32: bool = False, keep_float32: Iterable[type[torch.nn.Module] | str] = ()) -> None:
        self.tf32 = bool(tf32)
        self.module_policy = ModulePolicy(keep_float32)
        self._flags = Float32Flags()

    @override
    def setup(self) -> None:
        """Apply the float32 math settings for this run (called once at the start of a run)."""
        self._flags.apply(tf32=self.tf32)

    @override
    def teardown(self) -> None:
        """Restore the math settings :meth:`setup` changed; idempotent."""
        self._flags.restore()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, tf32={self.tf32})"
