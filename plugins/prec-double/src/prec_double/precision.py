"""DoublePrecision: float64 weights, activations and gradients, and complex128 for complex tensors."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from typing_extensions import override

from prec.errors import ConfigurationError, UnsupportedPrecisionError
from prec.plugin.catalogue import known_gap
from prec.precision import TruePrecision, apply_to_tensors

NAME = "64-true"
#: Device types whose hardware has no float64 arithmetic: 64-true refuses them whoever registered them.
NO_FLOAT64_DEVICE_TYPES: dict[str, str] = {"xla": "TPU (xla)", "mps": "Apple MPS"}
#: The dtypes cast on the way in by default: what torch makes when nobody asked for a dtype.
DEFAULT_INPUT_DTYPES: frozenset[torch.dtype] = frozenset({torch.float32, torch.complex64})
_OUTPUT_DTYPES = (torch.float32, torch.float64)


def no_float64_error(device_type: str) -> UnsupportedPrecisionError:
    """The error for a device without float64, with the reason the registry gives for the same pair."""
    gap = known_gap(NAME, device_type)
    label = NO_FLOAT64_DEVICE_TYPES.get(device_type, device_type)
    reason = gap or f"{label} devices have no float64 arithmetic. Use precision='32-true'"
    return UnsupportedPrecisionError(
        f"precision={NAME!r} cannot run on device type {device_type!r}: {reason}."
        " 64-true keeps every weight, activation and gradient in float64 (complex128 for complex tensors),"
        " which this hardware cannot compute."
    )


def check_device_type(device_type: str | None) -> None:
    """Raise :class:`prec.UnsupportedPrecisionError` for a device type that has no float64."""
    if device_type in NO_FLOAT64_DEVICE_TYPES:
        raise no_float64_error(device_type)


def to_double(tensor: Tensor) -> Tensor:
    """float16/bfloat16/float32 -> float64 and complex32/complex64 -> complex128; integers and bools untouched.

    ``Module.to(dtype=torch.float64)`` would cast complex tensors to float64 and drop their imaginary part (and
    ``Module.double()`` leaves them at complex64); this cast keeps them complex, as complex128, and is what
    ``convert_module`` applies instead.
    """
    check_device_type(tensor.device.type)
    if tensor.is_complex():
        return tensor if tensor.dtype == torch.complex128 else tensor.to(torch.complex128)
    if tensor.is_floating_point():
        return tensor if tensor.dtype == torch.float64 else tensor.to(torch.float64)
    return tensor


class DoublePrecision(TruePrecision):
    """64-true: every floating parameter, buffer, activation and gradient in float64, complex ones in complex128.

    Args:
        device_type: the torch device type this instance runs on (``"cpu"``, ``"cuda"``), or ``None`` for any.
            ``"xla"`` and ``"mps"`` raise :class:`prec.UnsupportedPrecisionError`: that hardware has no float64.
        convert_inputs_from: input dtypes cast on the way into a step (float32 to float64, complex64 to
            complex128). By default only float32 and complex64, torch's defaults: a tensor the user made in
            float16 or bfloat16 on purpose, an integer tensor or a float64 one is passed through unchanged.
        output_dtype: what ``predict`` returns. ``None`` (default) keeps float64/complex128 outputs, the point of
            computing in 64 bit; ``torch.float32`` casts floating outputs to float32 and complex ones to complex64.
    """

    def __init__(
        self,
        *,
        device_type: str | None = None,
        convert_inputs_from: Iterable[torch.dtype] | None = None,
        output_dtype: torch.dtype | None = None,
        keep_float32: Iterable[type[torch.nn.Module] | str] = (),
    ) -> None:
        check_device_type(device_type)
        if output_dtype is not None and output_dtype not in _OUTPUT_DTYPES:
            raise ConfigurationError(
                f"output_dtype={output_dtype!r} is not valid for 64-true; use None (keep float64 outputs) or"
                " torch.float32 (cast them back, as 32-bit code downstream may expect)."
            )
        inputs = frozenset(DEFAULT_INPUT_DTYPES if convert_inputs_from is None else convert_inputs_from)
        bad = sorted(str(dtype) for dtype in inputs if not isinstance(dtype, torch.dtype) or not _castable(dtype))
        if bad:
            raise ConfigurationError(
                f"convert_inputs_from holds {', '.join(bad)}; 64-true can only cast floating and complex dtypes."
            )
        super().__init__(
            NAME, torch.float64, device_type=device_type, convert_inputs_from=inputs, keep_float32=keep_float32
        )
        self.output_dtype = output_dtype

    @override
    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        """Cast floating parameters and buffers to float64 and complex ones to complex128, in place (modules
        named by ``keep_float32`` stay float32)."""
        return self.module_policy.apply(module, cast_to=torch.float64, cast=to_double)

    @override
    def convert_output(self, data: Any) -> Any:
        """Keep float64 outputs (the default), or cast them to ``output_dtype``."""
        if self.output_dtype is None or self.output_dtype == torch.float64:
            return data
        return apply_to_tensors(data, _to_single)

    @override
    def cast_input_tensor(self, tensor: Tensor) -> Tensor:
        if tensor.dtype not in self.convert_inputs_from:
            return tensor
        check_device_type(tensor.device.type)
        return tensor.to(torch.complex128 if tensor.is_complex() else torch.float64)

    def __repr__(self) -> str:
        output = "float64" if self.output_dtype in (None, torch.float64) else "float32"
        return f"{type(self).__name__}(device_type={self.device_type!r}, outputs={output})"


def _castable(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point or dtype.is_complex


def _to_single(tensor: Tensor) -> Tensor:
    if tensor.dtype == torch.float64:
        return tensor.float()
    if tensor.dtype == torch.complex128:
        return tensor.to(torch.complex64)
    return tensor
