"""mxfp8-mixed and int8-mixed: bf16-mixed (float32 weights and optimizer state, bfloat16 autocast) whose
``convert_module`` also makes Linear layers run their matmuls in MXFP8 or int8 through torchao.

As for fp8, every check runs at selection time: torchao present, options valid, the device able to run the
matmuls. There is no ``mxfp8-bf16-true``: MX's per-32 scales exist to keep accuracy that tensorwise fp8 loses, and
bfloat16 weights lose far more (the CPU benchmark: bf16-true ends 12% above 32-true, fp8 on top adds 0.2%).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from typing_extensions import override

from prec import Option, PerformanceWarning, check_options, warn
from prec.accelerator import Accelerator
from prec.errors import ConfigurationError, UnsupportedPrecisionError
from prec.precision import MixedPrecision, Precision
from prec_torchao import precisions
from prec_torchao.availability import load_int8, load_mx, mx_gpu_reason, mx_unavailable_reason
from prec_torchao.conversion import INT8_RULE, MX_RULE, ConversionReport
from prec_torchao.layers import Int8TrainingLinear, MXFP8TrainingLinear, swap_layers
from prec_torchao.precisions import (
    CACHE_OPTION,
    FILTER_OPTIONS,
    Converter,
    ConvertingPrecision,
    check_available,
    check_filter_options,
    is_bool,
)

#: prec's names for torchao's MXFP8 recipes: ``rceil`` (the default, all three matmuls in MXFP8) and
#: ``rceil_wgrad_with_hp`` (the weight gradient in bfloat16). On cpu the emulated recipe of either is used.
MX_RECIPES = ("rceil", "rceil_wgrad_with_hp")

MX_OPTIONS = (
    Option("recipe", f"one of {', '.join(map(repr, MX_RECIPES))}", lambda value: value in MX_RECIPES, "rceil"),
    *FILTER_OPTIONS,
    Option("emulate", "True or False", is_bool),
    CACHE_OPTION,
)
INT8_OPTIONS = (*FILTER_OPTIONS, CACHE_OPTION)


class MXFP8Converter(Converter):
    """torchao's ``MXFP8TrainingOpConfig`` (from its recipe) applied by :class:`MXFP8TrainingLinear`."""

    target = "MXFP8"
    rule = MX_RULE
    layer_type = MXFP8TrainingLinear

    def __init__(self, options: dict[str, Any], *, emulate: bool) -> None:
        super().__init__(options, recipe=options["recipe"], emulate=emulate)
        self.api = load_mx()
        recipes = self.api.MXFP8TrainingRecipe
        recipe = recipes.MXFP8_RCEIL_WGRAD_WITH_HP if self.recipe == "rceil_wgrad_with_hp" else recipes.MXFP8_RCEIL
        if emulate:
            recipe = recipes.MXFP8_EMULATED_RCEIL
        config = self.api.MXFP8TrainingOpConfig.from_recipe(recipe)
        if emulate and self.recipe == "rceil_wgrad_with_hp":  # torchao's one emulated recipe, wgrad in bfloat16
            config = replace(config, wgrad_with_hp=True)
        self.config = config

    @override
    def swap(self, module: torch.nn.Module, report: ConversionReport) -> torch.nn.Module:
        matmul = self.api.to_mxfp8_then_scaled_mm
        swap_layers(module, report.converted, MXFP8TrainingLinear, config=self.config, matmul=matmul)
        return module


class Int8Converter(Converter):
    """torchao's ``Int8MixedPrecisionTrainingConfig`` (int8 output, input and weight gradients) applied by
    :class:`Int8TrainingLinear`."""

    target = "int8"
    rule = INT8_RULE
    layer_type = Int8TrainingLinear

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__(options, recipe="dynamic rowwise", emulate=False)
        self.api = load_int8()
        self.config = self.api.Int8MixedPrecisionTrainingConfig()

    @override
    def swap(self, module: torch.nn.Module, report: ConversionReport) -> torch.nn.Module:
        matmul = self.api.linear_function
        swap_layers(module, report.converted, Int8TrainingLinear, config=self.config, matmul=matmul)
        return module


class MXFP8MixedPrecision(ConvertingPrecision, MixedPrecision):
    """mxfp8-mixed: float32 weights and optimizer state, bfloat16 autocast, MXFP8 matmuls in converted layers."""

    def __init__(self, device_type: str, converter: MXFP8Converter, *, cache_enabled: bool = True) -> None:
        super().__init__("mxfp8-mixed", device_type, torch.bfloat16, cache_enabled=cache_enabled)
        self.converter = converter


class Int8MixedPrecision(ConvertingPrecision, MixedPrecision):
    """int8-mixed: float32 weights and optimizer state, bfloat16 autocast, int8 matmuls in converted layers."""

    def __init__(self, device_type: str, converter: Int8Converter, *, cache_enabled: bool = True) -> None:
        super().__init__("int8-mixed", device_type, torch.bfloat16, cache_enabled=cache_enabled)
        self.converter = converter


def _require_bfloat16(name: str, accelerator: Accelerator) -> None:
    if not accelerator.supports_dtype(torch.bfloat16):
        raise UnsupportedPrecisionError(
            f"precision={name!r} computes in bfloat16 around its low-precision matmuls, which this GPU lacks"
            " (compute capability 8.0+ is needed). Use precision='16-mixed' instead."
        )


def _mx_emulate(accelerator: Accelerator, emulate: bool | None) -> bool:
    """Emulate on cpu (warned unless asked for); on cuda only when asked, else the GPU must have MX tensor cores."""
    name = "mxfp8-mixed"
    if accelerator.name != "cuda":
        if emulate is False:
            raise ConfigurationError(
                f"precision_options for {name}: emulate=False needs MXFP8 kernels, which only run on a CUDA GPU"
                " with compute capability 10.0+ (Blackwell). On cpu, MXFP8 is emulated: leave emulate out or pass"
                " emulate=True."
            )
        if emulate is None:
            warn(
                f"precision={name!r} on {accelerator.name} emulates MXFP8 matmuls in bfloat16: the numerics are the"
                " real MXFP8 ones, the speed is not (several times slower than bf16-mixed). Use it to test MXFP8"
                " training before renting a GPU; pass precision_options={'emulate': True} to silence this.",
                PerformanceWarning,
            )
        return True
    _require_bfloat16(name, accelerator)
    if emulate:
        return True
    reason = mx_gpu_reason(precisions.cuda_capability(), torch.version.cuda)
    if reason is not None:
        describe = getattr(accelerator, "device_description", None)
        device = f" ({describe()})" if callable(describe) else ""
        raise UnsupportedPrecisionError(
            f"precision={name!r} cannot run on this GPU{device}: {reason}. Use precision='fp8-mixed' (compute"
            " capability 8.9+) or 'bf16-mixed' instead, or precision_options={'emulate': True} to check the MXFP8"
            " numerics slowly."
        )
    return False


def mxfp8_mixed(accelerator: Accelerator, **options: Any) -> Precision:
    """mxfp8-mixed: float32 master weights, bfloat16 autocast, MXFP8 matmuls in the converted Linear layers."""
    check_available("mxfp8-mixed", mx_unavailable_reason())
    options = check_options("mxfp8-mixed", options, MX_OPTIONS)
    check_filter_options("mxfp8-mixed", options)
    emulate = _mx_emulate(accelerator, options.get("emulate"))
    converter = MXFP8Converter(options, emulate=emulate)
    device_type = accelerator.device_type or accelerator.name
    return MXFP8MixedPrecision(device_type, converter, cache_enabled=options["cache_enabled"])


def int8_mixed(accelerator: Accelerator, **options: Any) -> Precision:
    """int8-mixed: float32 master weights, bfloat16 autocast, int8 matmuls in the converted Linear layers."""
    check_available("int8-mixed")
    options = check_options("int8-mixed", options, INT8_OPTIONS)
    check_filter_options("int8-mixed", options)
    if accelerator.name == "cuda":
        _require_bfloat16("int8-mixed", accelerator)
    device_type = accelerator.device_type or accelerator.name
    return Int8MixedPrecision(device_type, Int8Converter(options), cache_enabled=options["cache_enabled"])
