"""The bitsandbytes precisions: frozen quantized base Linear layers, everything else float32 and trainable.

Quantized fine-tuning (QLoRA and its relatives) keeps the pretrained Linear weights in 4 or 8 bits, frozen, and
trains small float32 parameters next to them: adapters, a head, norms, biases. So this is a mixed precision:
float32 parameters and optimizer state (``param_dtype``), autocast to ``compute_dtype`` around the steps, and the
quantized layers dequantize into ``compute_dtype`` for their matmuls.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from typing_extensions import override

from prec.errors import ConfigurationError, PerformanceWarning
from prec.precision import MixedPrecision
from prec_bnb.layers import layer_classes

if TYPE_CHECKING:
    from types import ModuleType

#: ``torch.nn.Linear`` itself, also while :meth:`BitsandbytesPrecision.module_init_context` replaces it.
LINEAR = torch.nn.Linear
COMPUTE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class QuantizationReport:
    """What :meth:`BitsandbytesPrecision.convert_module` did: the quantized Linear layers and the kept ones."""

    quantized: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    def summary(self) -> str:
        total = len(self.quantized) + len(self.kept)
        kept = f" (kept in float32: {', '.join(self.kept[:5])}{' ...' if len(self.kept) > 5 else ''})"
        return f"{len(self.quantized)} of {total} Linear layers quantized" + (kept if self.kept else "")


def ignored(name: str, patterns: tuple[str, ...]) -> bool:
    """``name`` is one of ``patterns`` or inside one (``"head"`` covers ``"head"`` and ``"head.proj"``)."""
    return any(name == pattern or name.startswith(pattern + ".") for pattern in patterns)


def _replace(module: torch.nn.Module, name: str, layer: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(module.get_submodule(parent_name) if parent_name else module, child, layer)


class BitsandbytesPrecision(MixedPrecision):
    """One of Lightning's ``BitsandbytesPrecision`` modes as a prec precision (see the package README)."""

    param_dtype = torch.float32

    def __init__(
        self,
        name: str,
        device_type: str,
        mode: str,
        bnb: ModuleType,
        *,
        compute_dtype: torch.dtype,
        ignore_modules: tuple[str, ...] = (),
    ) -> None:
        half = compute_dtype in (torch.float16, torch.bfloat16)
        super().__init__(
            name,
            device_type,
            compute_dtype if half else torch.bfloat16,
            scaler=True if compute_dtype == torch.float16 else None,
        )
        self.compute_dtype = compute_dtype
        self.mode = mode
        self.ignore_modules = ignore_modules
        self.bnb = bnb
        self.classes = layer_classes(bnb)
        self.linear_cls = self.classes[mode]
        self.report = QuantizationReport()

    @property
    def quantized_types(self) -> tuple[type, ...]:
        return (self.classes["base:4bit"], self.classes["base:int8"])

    @override
    def forward_context(self) -> AbstractContextManager[None]:
        if self.compute_dtype == torch.float32:
            return nullcontext()
        return super().forward_context()

    @override
    def module_init_context(self) -> AbstractContextManager[None]:
        """``torch.nn.Linear`` builds this mode's quantized layer in the body: each weight exists in full only for
        the layer being built, in the compute dtype, before it is quantized."""
        stack = ExitStack()
        stack.enter_context(self.tensor_init_context())
        stack.enter_context(_linear_replaced(self.init_linear_class()))
        return stack

    def init_linear_class(self) -> type:
        """``self.linear_cls`` with this precision's compute dtype bound, called like ``torch.nn.Linear``."""
        base, compute_dtype = self.linear_cls, self.compute_dtype

        def __init__(layer: Any, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("dtype", None)  # the quantized weight has its own dtype; the bias is float32
            base.__init__(layer, *args, compute_dtype=compute_dtype, **kwargs)

        return type(base.__name__, (base,), {"__init__": __init__, "__module__": base.__module__})

    @override
    def produced_param_dtypes(self) -> frozenset[torch.dtype]:
        """Float32 trainable parameters, the frozen weights' integer storage (4-bit packed in uint8, int8), and
        int8-training's float16 weight, which it trains and re-quantizes each step."""
        trained = {torch.float16} if self.mode == "int8-training" else set()
        return frozenset({self.param_dtype, torch.uint8, torch.int8, *trained})

    @override
    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        """Quantize every ``torch.nn.Linear`` not in ``ignore_modules`` (from its current weights), set the compute
        dtype of layers built quantized, and cast every other floating parameter and buffer to float32."""
        report = QuantizationReport()
        for name, layer in list(module.named_modules()):
            if isinstance(layer, self.quantized_types):
                if ignored(name, self.ignore_modules):
                    if not name:
                        raise ConfigurationError(f"{self.name}: ignore_modules cannot name the root module.")
                    _replace(module, name, self._unquantize(name, layer))
                    report.kept.append(name)
                    continue
                self._check_mode(name, layer)
                layer.compute_dtype = self.compute_dtype
                report.quantized.append(name)
            elif type(layer) is LINEAR:
                if ignored(name, self.ignore_modules):
                    report.kept.append(name)
                    continue
                if not name:
                    raise ConfigurationError(
                        f"{self.name}: the module itself is a torch.nn.Linear; quantize it inside a parent module."
                    )
                _replace(module, name, self._quantized_copy(layer))
                report.quantized.append(name)
        for sub in module.modules():
            if not isinstance(sub, self.quantized_types):
                for tensor in [*sub.parameters(recurse=False), *sub.buffers(recurse=False)]:
                    if tensor.is_floating_point() and tensor.dtype != torch.float32:
                        tensor.data = tensor.data.float()
            elif sub.bias is not None and sub.bias.dtype != torch.float32:
                sub.bias.data = sub.bias.data.float()
        self.report = report
        if not report.quantized and any(isinstance(m, LINEAR) for m in module.modules()):
            from prec import warn

            warn(f"{self.name}: {report.summary()}; nothing is stored in low precision.", PerformanceWarning)
        return module

    def _check_mode(self, name: str, layer: torch.nn.Module) -> None:
        if getattr(layer, "mode", self.mode) != self.mode:
            raise ConfigurationError(
                f"{self.name}: layer {name!r} was quantized as {layer.mode!r} (by another bitsandbytes precision);"
                f" it cannot be converted to {self.mode!r}. Build the model again under this precision."
            )

    def _quantized_copy(self, linear: torch.nn.Linear) -> torch.nn.Module:
        device = linear.weight.device
        if device.type == "meta":
            raise ConfigurationError(
                f"{self.name}: a Linear layer on the meta device has no weights to quantize; build the model under"
                " Trainer.init_module() (it quantizes as it builds) or materialise it first."
            )
        layer = self.linear_cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device=device,
            compute_dtype=self.compute_dtype,
        )
        layer.quantize_(linear.weight)
        if linear.bias is not None:
            layer.bias = torch.nn.Parameter(linear.bias.detach().float(), requires_grad=linear.bias.requires_grad)
        return layer

    def _unquantize(self, name: str, layer: torch.nn.Module) -> torch.nn.Linear:
        """A layer ``init_module`` built quantized that ``ignore_modules`` names: while it holds only its random
        initialisation it is rebuilt as a float32 ``nn.Linear`` with a fresh one (the same distribution)."""
        if not layer.randomly_initialised:
            raise ConfigurationError(
                f"{self.name}: ignore_modules names {name!r}, but weights were already loaded into it quantized;"
                " keep it out of Trainer.init_module() (build it before or after) so it is never quantized."
            )
        device = layer.bias.device if layer.bias is not None else layer.weight.device
        return LINEAR(layer.in_features, layer.out_features, bias=layer.bias is not None, device=device)

    @override
    def setup_module(self, module: torch.nn.Module) -> None:
        super().setup_module(module)
        for name, layer in module.named_modules():
            if isinstance(layer, self.quantized_types) and layer.weight.requires_grad and self.mode != "int8-training":
                raise ConfigurationError(f"{self.name}: the quantized weight of {name!r} requires grad; it is frozen.")

    @override
    def __repr__(self) -> str:
        dtype = {value: key for key, value in COMPUTE_DTYPES.items()}[self.compute_dtype]
        ignore = f", ignore_modules={list(self.ignore_modules)}" if self.ignore_modules else ""
        return f"{type(self).__name__}(name={self.name!r}, compute_dtype={dtype!r}{ignore})"


@contextmanager
def _linear_replaced(cls: type) -> Iterator[None]:
    original = torch.nn.Linear
    torch.nn.Linear = cls  # type: ignore[misc]
    try:
        yield
    finally:
        torch.nn.Linear = original  # type: ignore[misc]
