"""Swapping ``nn.Linear`` layers for low-precision ones (torchao's ``Float8Linear``, prec-torchao's MXFP8 and int8
layers): which layers, with which recipe, and a report.

Each format's kernels need both dimensions of a weight to be multiples of some number (fp8: 16, MXFP8: 32, int8: 8);
other layers always stay in high precision, and the report says why. The output head stays too unless asked: its
outputs feed the loss directly and are the layer most sensitive to fp8 rounding (torchao's own guidance, and what
Transformer Engine users do by hand).
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


@dataclass(frozen=True)
class DimensionRule:
    """What both dimensions of a weight must be a multiple of for a format's matmuls, and why (shown in reports)."""

    multiple: int
    why: str

    def refusal(self, in_features: int, out_features: int) -> str | None:
        """Why a Linear of these sizes stays in high precision, or ``None`` when it can be converted."""
        if in_features % self.multiple or out_features % self.multiple:
            return f"{in_features}x{out_features} is not a multiple of {self.multiple} ({self.why})"
        return None


FP8_RULE = DimensionRule(FP8_DIM_MULTIPLE, "fp8 kernels")
#: MXFP8 scales blocks of 32 elements along every matmul's inner dimension, which is each side of the weight in
#: one of the three matmuls (the token dimension too, in the weight gradient: padded by the MXFP8 layer).
MX_RULE = DimensionRule(32, "MXFP8 scales blocks of 32")
#: torch._int_mm (the int8 matmul on CUDA without Triton) takes inner and output dimensions in multiples of 8.
INT8_RULE = DimensionRule(8, "int8 matmul kernels")

ModuleFilter = Callable[[torch.nn.Module, str], bool]


@dataclass
class ConversionReport:
    """What :func:`convert_linear_layers` did: the converted layers' names and why each other Linear was kept."""

    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    target: str = "Float8Linear"

    @property
    def fraction(self) -> float:
        """Converted Linear layers over all Linear layers (0.0 when the model has none)."""
        total = len(self.converted) + len(self.skipped)
        return len(self.converted) / total if total else 0.0

    def summary(self) -> str:
        total = len(self.converted) + len(self.skipped)
        text = f"{len(self.converted)} of {total} Linear layers converted to {self.target}"
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
    already: type[torch.nn.Module] | tuple[type[torch.nn.Module], ...] | None = None,
    rule: DimensionRule = FP8_RULE,
    target: str = "Float8Linear",
) -> ConversionReport:
    """Decide which Linear layers to convert. The head is the last Linear in registration order; a layer already
    of type ``already`` counts as converted."""
    layers = _linear_layers(module)
    head = layers[-1][0] if layers else None
    patterns = tuple(skip)
    report = ConversionReport(target=target)
    for name, layer in layers:
        out_features, in_features = layer.weight.shape
        refusal = rule.refusal(in_features, out_features)
        if already is not None and isinstance(layer, already):
            report.converted.append(name)
        elif refusal is not None:
            report.skipped[name] = refusal
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


def convert_linear_layers(
    module: torch.nn.Module, float8: Any, config: Any, report: ConversionReport, *, cpu_autocast: bool
) -> torch.nn.Module:
    """Swap the planned layers in place through ``torchao.float8.convert_to_float8_training``; under CPU autocast
    (``cpu_autocast``) they become :class:`~prec_torchao.float8_cpu.CpuAutocastFloat8Linear`, which follows it."""
    chosen = set(report.converted)
    linear_type = float8.Float8Linear
    before = {name for name, layer in module.named_modules() if isinstance(layer, linear_type)}
    converted = float8.convert_to_float8_training(
        module,
        config=config,
        module_filter_fn=lambda layer, name: name in chosen and name not in before,
    )
    if cpu_autocast:
        from prec_torchao.float8_cpu import CpuAutocastFloat8Linear  # imports torchao, loaded by now

        for name, layer in converted.named_modules():
            if name in chosen and name not in before and type(layer) is linear_type:
                layer.__class__ = CpuAutocastFloat8Linear
    return converted
