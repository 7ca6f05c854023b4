"""Swapping ``nn.Linear`` layers for torchao's ``Float8Linear``: which layers, with which recipe, and a report.

fp8 kernels (``torch._scaled_mm``) need both dimensions of a weight to be multiples of 16, so other layers always
stay in high precision. The output head stays too unless asked: its outputs feed the loss directly and are the
layer most sensitive to fp8 rounding (torchao's own guidance, and what Transformer Engine users do by hand).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

#: The scaling recipes torchao ships (``Float8LinearConfig.from_recipe_name``).
RECIPES = ("tensorwise", "rowwise", "rowwise_with_gw_hp")
#: The dimension fp8 matmul kernels need both sides of a weight to be a multiple of.
FP8_DIM_MULTIPLE = 16

ModuleFilter = Callable[[torch.nn.Module, str], bool]


@dataclass
class ConversionReport:
    """What :func:`convert_linear_layers` did: the converted layers' names and why each other Linear was kept."""

    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        """Converted Linear layers over all Linear layers (0.0 when the model has none)."""
        total = len(self.converted) + len(self.skipped)
        return len(self.converted) / total if total else 0.0

    def summary(self) -> str:
        total = len(self.converted) + len(self.skipped)
        text = f"{len(self.converted)} of {total} Linear layers converted to Float8Linear"
        if self.skipped:
            reasons = "; ".join(f"{name or '<root>'}: {why}" for name, why in list(self.skipped.items())[:5])
            more = f"; and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            text += f" (kept: {reasons}{more})"
        return text


def float8_config(float8: Any, recipe: str, *, emulate: bool, fsdp_float8_all_gather: bool) -> Any:
    """torchao's ``Float8LinearConfig`` for ``recipe``, with emulation and FSDP2 float8 all-gather set."""
    config = float8.Float8LinearConfig.from_recipe_name(recipe)
    return replace(config, emulate=emulate, enable_fsdp_float8_all_gather=fsdp_float8_all_gather)


def _linear_layers(module: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    return [(name, layer) for name, layer in module.named_modules() if isinstance(layer, torch.nn.Linear)]


def plan(
    module: torch.nn.Module,
    *,
    convert_head: bool,
    skip: Iterable[str],
    module_filter: ModuleFilter | None,
    already: type[torch.nn.Module] | None = None,
) -> ConversionReport:
    """Decide which Linear layers to convert. The head is the last Linear in registration order."""
    layers = _linear_layers(module)
    head = layers[-1][0] if layers else None
    patterns = tuple(skip)
    report = ConversionReport()
    for name, layer in layers:
        out_features, in_features = layer.weight.shape
        if already is not None and isinstance(layer, already):
            report.converted.append(name)
        elif in_features % FP8_DIM_MULTIPLE or out_features % FP8_DIM_MULTIPLE:
            report.skipped[name] = f"{in_features}x{out_features} is not a multiple of {FP8_DIM_MULTIPLE}"
        elif module_filter is not None:
            if module_filter(layer, name):
                report.converted.append(name)
            else:
                report.skipped[name] = "module_filter returned False"
        elif any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            report.skipped[name] = "matched skip"
        elif name == head and not convert_head:
            report.skipped[name] = "output head (convert_head=False)"
        else:
            report.converted.append(name)
    return report


class CpuAutocastBridge:
    """Run a Float8Linear under CPU autocast the way torchao runs it under CUDA autocast.

    torchao's Float8Linear reproduces autocast itself but reads only the CUDA autocast state: under CPU autocast it
    would compute in float32, and under ``torch.inference_mode`` (prec's validation) CPU autocast reaches its float8
    tensors and fails. The pre-hook casts the input to the autocast dtype and switches CPU autocast off for the
    layer's own forward; the hook after it (``always_call``: also when the forward raises) switches it back."""

    def __init__(self) -> None:
        self.contexts: list[torch.autocast] = []

    def before(self, module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        if not torch.is_autocast_enabled("cpu"):
            self.contexts.append(None)  # type: ignore[arg-type]
            return args
        dtype = torch.get_autocast_dtype("cpu")
        context = torch.autocast("cpu", enabled=False)
        context.__enter__()
        self.contexts.append(context)
        return tuple(
            arg.to(dtype) if isinstance(arg, torch.Tensor) and arg.is_floating_point() else arg for arg in args
        )

    def after(self, module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
        context = self.contexts.pop() if self.contexts else None
        if context is not None:
            context.__exit__(None, None, None)

    def attach(self, module: torch.nn.Module) -> None:
        module.register_forward_pre_hook(self.before)
        module.register_forward_hook(self.after, always_call=True)


def convert_linear_layers(
    module: torch.nn.Module, float8: Any, config: Any, report: ConversionReport, *, cpu_autocast: bool
) -> torch.nn.Module:
    """Swap the planned layers in place through ``torchao.float8.convert_to_float8_training``."""
    chosen = set(report.converted)
    linear_type = float8.Float8Linear
    before = {name for name, layer in module.named_modules() if isinstance(layer, linear_type)}
    converted = float8.convert_to_float8_training(
        module,
        config=config,
        module_filter_fn=lambda layer, name: name in chosen and name not in before,
    )
    if cpu_autocast:
        for name, layer in converted.named_modules():
            if name in chosen and name not in before and isinstance(layer, linear_type):
                CpuAutocastBridge().attach(layer)
    return converted
