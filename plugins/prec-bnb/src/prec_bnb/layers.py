"""bitsandbytes Linear layers that quantize as they are built and load both quantized and float checkpoints.

bitsandbytes' own layers quantize on ``.to(device)`` from a float weight that already exists in full. These build
their weight on the meta device, draw ``nn.Linear``'s initialisation in the compute dtype for one layer at a time,
quantize it and drop it: a model built under ``init_module`` never holds its Linear weights in float32. The bias
stays a float32 parameter (it is tiny and may be trained); the quantized weight is frozen.

The classes are made by :func:`layer_classes` once bitsandbytes is imported, so importing this package stays cheap.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from typing_extensions import override

#: Lightning's ``BitsandbytesPrecision`` modes: (bitsandbytes quant_type, double quantization of the scales).
FOUR_BIT_MODES = {"nf4": ("nf4", False), "nf4-dq": ("nf4", True), "fp4": ("fp4", False), "fp4-dq": ("fp4", True)}
INT8_MODES = ("int8", "int8-training")
MODES = (*FOUR_BIT_MODES, *INT8_MODES)


def _initial_weight(out_features: int, in_features: int, dtype: torch.dtype, device: Any) -> torch.Tensor:
    """``nn.Linear``'s weight initialisation (kaiming uniform, a=sqrt(5)), drawn directly in ``dtype``."""
    weight = torch.empty(out_features, in_features, dtype=dtype, device=device)
    torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    return weight


def _initial_bias(in_features: int, out_features: int, device: Any) -> torch.nn.Parameter:
    bound = 1 / math.sqrt(in_features) if in_features > 0 else 0
    return torch.nn.Parameter(torch.empty(out_features, dtype=torch.float32, device=device).uniform_(-bound, bound))


def _autocasting(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type autocast does not know
        return False


@functools.cache
def layer_classes(bnb: Any) -> dict[str, type[torch.nn.Linear]]:
    """The quantized Linear class of every mode, built on the imported ``bitsandbytes`` module."""

    class QuantizedLinear4bit(bnb.nn.Linear4bit):
        """A frozen nf4/fp4 weight (optionally with double-quantized scales) and a float32 bias."""

        quant_kind = "4bit"

        def __init__(
            self,
            in_features: int,
            out_features: int,
            bias: bool = True,
            device: Any = None,
            dtype: torch.dtype | None = None,
            *,
            quant_type: str,
            double_quant: bool,
            compute_dtype: torch.dtype,
        ) -> None:
            super().__init__(
                in_features,
                out_features,
                bias=False,
                compute_dtype=compute_dtype,
                compress_statistics=double_quant,
                quant_type=quant_type,
                device="meta",
            )
            self.bias = _initial_bias(in_features, out_features, device) if bias else None
            self.quantize_(_initial_weight(out_features, in_features, compute_dtype, device))
            #: True until weights are loaded into the layer: it holds only a random initialisation.
            self.randomly_initialised = True

        def quantize_(self, weight: torch.Tensor) -> None:
            """Quantize a float weight into this layer, replacing what it held."""
            data = weight.detach().contiguous().to(self.compute_dtype)
            quantized, state = bnb.functional.quantize_4bit(
                data,
                blocksize=self.weight.blocksize,
                compress_statistics=self.weight.compress_statistics,
                quant_type=self.weight.quant_type,
                quant_storage=torch.uint8,
            )
            self.weight = bnb.nn.Params4bit(
                quantized,
                requires_grad=False,
                quant_state=state,
                blocksize=self.weight.blocksize,
                compress_statistics=self.weight.compress_statistics,
                quant_type=self.weight.quant_type,
                quant_storage=torch.uint8,
                module=self,
                bnb_quantized=True,
            )
            self.quant_state = state
            self.randomly_initialised = False

        def dequantized_weight(self) -> torch.Tensor:
            """The weight the layer computes with, in its compute dtype."""
            return bnb.functional.dequantize_4bit(self.weight.data, self.weight.quant_state).to(self.compute_dtype)

        @override
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """The matmul runs in the compute dtype. Its result keeps that dtype under autocast (as nn.Linear's
            does) and is cast back to the input's dtype otherwise. Unlike bitsandbytes' forward it never repacks
            the weight for CPU inference, nor casts the float32 bias in place."""
            bias = None if self.bias is None else self.bias.to(self.compute_dtype)
            out = bnb.matmul_4bit(x.to(self.compute_dtype), self.weight, bias=bias, quant_state=self.weight.quant_state)
            return out if _autocasting(x.device.type) else out.to(x.dtype)

        @override
        def _load_from_state_dict(
            self, state_dict: dict[str, Any], prefix: str, local_metadata: Any, strict: bool, *args: Any
        ) -> None:
            weight = state_dict.get(prefix + "weight")
            if weight is not None and weight.is_floating_point():  # a full-precision checkpoint: quantize it
                self.quantize_(state_dict.pop(prefix + "weight"))
            elif weight is not None:  # a quantized checkpoint: the packed weight and its quant-state entries
                keys = [key for key in state_dict if key.startswith(prefix + "weight.")]
                stats = {key[len(prefix + "weight.") :]: state_dict.pop(key) for key in keys}
                data = state_dict.pop(prefix + "weight")
                device = self.bias.device if self.bias is not None else data.device
                self.weight = bnb.nn.Params4bit.from_prequantized(data, stats, device=device, module=self)
                self.randomly_initialised = False
            _load_rest(self, weight is not None, state_dict, prefix, local_metadata, strict, *args)

    class QuantizedLinear8bit(bnb.nn.Linear8bitLt):
        """LLM.int8(): an int8 weight with one float scale per output row (``SCB``), and a float32 bias.
        ``trainable=True`` (int8-training) keeps a float16 weight that is trained and re-quantized every step."""

        quant_kind = "int8"

        def __init__(
            self,
            in_features: int,
            out_features: int,
            bias: bool = True,
            device: Any = None,
            dtype: torch.dtype | None = None,
            *,
            trainable: bool,
            compute_dtype: torch.dtype,
            threshold: float = 6.0,
        ) -> None:
            super().__init__(
                in_features, out_features, bias=False, has_fp16_weights=trainable, threshold=threshold, device="meta"
            )
            self.compute_dtype = compute_dtype
            self.bias = _initial_bias(in_features, out_features, device) if bias else None
            self.quantize_(_initial_weight(out_features, in_features, torch.float16, device))
            self.randomly_initialised = True

        def quantize_(self, weight: torch.Tensor) -> None:
            """Quantize (int8) or store (int8-training: float16) a float weight into this layer."""
            data = weight.detach().contiguous().to(torch.float16)
            self.state.reset_grads()
            self.state.CB = self.state.SCB = None
            if self.state.has_fp16_weights:
                self.weight = bnb.nn.Int8Params(data, requires_grad=True, has_fp16_weights=True)
            else:
                rows, scales, _ = bnb.functional.int8_vectorwise_quant(data)
                self.weight = bnb.nn.Int8Params(rows, requires_grad=False, has_fp16_weights=False, CB=rows, SCB=scales)
            self.randomly_initialised = False

        def dequantized_weight(self) -> torch.Tensor:
            """The weight the layer computes with, in its compute dtype."""
            if self.state.has_fp16_weights:
                return self.weight.data.to(self.compute_dtype)
            rows = self.weight.data
            scales = self.weight.SCB if self.weight.SCB is not None else self.state.SCB
            return (rows.float() * (scales.float().unsqueeze(1) / 127.0)).to(self.compute_dtype)

        @override
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """As :class:`QuantizedLinear4bit`'s: compute dtype inside, the float32 bias cast, not overwritten."""
            self.state.is_training = self.training
            if self.weight.CB is not None:
                self.init_8bit_state()
            bias = None if self.bias is None else self.bias.to(self.compute_dtype)
            out = bnb.matmul(x.to(self.compute_dtype), self.weight, bias=bias, state=self.state)
            if not self.state.has_fp16_weights and self.state.CB is not None:
                self.weight.data = self.state.CB
            return out if _autocasting(x.device.type) else out.to(x.dtype)

        @override
        def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
            torch.nn.Linear._save_to_state_dict(self, destination, prefix, keep_vars)
            if not self.state.has_fp16_weights:
                scales = self.weight.SCB if self.weight.SCB is not None else self.state.SCB
                destination[prefix + "SCB"] = scales if keep_vars else scales.detach()

        @override
        def _load_from_state_dict(
            self, state_dict: dict[str, Any], prefix: str, local_metadata: Any, strict: bool, *args: Any
        ) -> None:
            state_dict.pop(prefix + "weight_format", None)  # bitsandbytes' own layout marker: always row-major
            weight = state_dict.get(prefix + "weight")
            scales = state_dict.pop(prefix + "SCB", None)
            if weight is not None and weight.is_floating_point() and not self.state.has_fp16_weights:
                self.quantize_(state_dict.pop(prefix + "weight"))
            elif weight is not None and scales is not None:
                rows = state_dict.pop(prefix + "weight")
                device = self.bias.device if self.bias is not None else rows.device
                rows, scales = rows.to(device), scales.to(device)
                self.state.reset_grads()
                self.state.CB = self.state.SCB = None
                self.weight = bnb.nn.Int8Params(rows, requires_grad=False, has_fp16_weights=False, CB=rows, SCB=scales)
            if weight is not None:
                self.randomly_initialised = False
            handled = weight is not None and prefix + "weight" not in state_dict
            _load_rest(self, handled, state_dict, prefix, local_metadata, strict, *args)

    classes: dict[str, type[torch.nn.Linear]] = {}
    for mode, (quant_type, double_quant) in FOUR_BIT_MODES.items():
        classes[mode] = _bind(QuantizedLinear4bit, mode, quant_type=quant_type, double_quant=double_quant)
    classes["int8"] = _bind(QuantizedLinear8bit, "int8", trainable=False)
    classes["int8-training"] = _bind(QuantizedLinear8bit, "int8-training", trainable=True)
    classes["base:4bit"] = QuantizedLinear4bit
    classes["base:int8"] = QuantizedLinear8bit
    return classes


def _load_rest(
    layer: torch.nn.Module, weight_loaded: bool, state_dict: dict[str, Any], prefix: str, *args: Any
) -> None:
    """``nn.Module``'s loading of the bias (and the weight when it was not handled already), so the weight taken
    from ``state_dict`` before is not reported missing."""
    parameters = dict(layer._parameters)  # noqa: SLF001 - put back in their order: state_dict keys keep it
    if weight_loaded:
        del layer._parameters["weight"]  # noqa: SLF001
    try:
        torch.nn.Module._load_from_state_dict(layer, state_dict, prefix, *args)
    finally:
        layer._parameters.clear()  # noqa: SLF001
        layer._parameters.update(parameters)  # noqa: SLF001


def _bind(base: type, mode: str, **fixed: Any) -> type:
    """A subclass with the mode's arguments fixed: still an ``isinstance`` of bitsandbytes' class."""

    def __init__(self: Any, *args: Any, compute_dtype: torch.dtype, **kwargs: Any) -> None:
        base.__init__(self, *args, compute_dtype=compute_dtype, **{**fixed, **kwargs})

    name = "Linear" + "".join(part.capitalize() for part in mode.split("-"))
    return type(name, (base,), {"__init__": __init__, "mode": mode, "__module__": __name__})
