"""The fp8 precisions: prec's mixed and true precisions whose ``convert_module`` also swaps Linear layers for
torchao's ``Float8Linear``.

Every check runs at selection time (``Trainer(...)``, ``prec.get_precision``): torchao present, options valid, the
GPU able to run fp8 kernels. A wrong choice fails there with a message that says what to use instead.
"""

from __future__ import annotations

from typing import Any

import torch
from typing_extensions import override

from prec import Option, PerformanceWarning, check_options, warn
from prec.accelerator import Accelerator
from prec.errors import ConfigurationError, UnsupportedPrecisionError
from prec.precision import MixedPrecision, Precision, TruePrecision
from prec_torchao.availability import load_float8, unavailable_reason
from prec_torchao.conversion import (
    FP8_RULE,
    RECIPES,
    ConversionReport,
    DimensionRule,
    ModuleFilter,
    convert_linear_layers,
    float8_config,
    plan,
)

#: The oldest CUDA compute capability with fp8 tensor cores (Ada Lovelace; Hopper is 9.0, Blackwell 10.0).
MIN_CAPABILITY = (8, 9)


def is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_patterns(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value)


#: Which Linear layers to convert: the options every precision of this package takes.
FILTER_OPTIONS = (
    Option("convert_head", "True or False", is_bool, False),
    Option("skip", "a list of module-name patterns (fnmatch, e.g. ['blocks.0.*'])", _is_patterns, ()),
    Option("module_filter", "a callable (module, name) -> bool, or None", lambda v: v is None or callable(v), None),
)
CACHE_OPTION = Option("cache_enabled", "True or False", is_bool, True)
CONVERSION_OPTIONS = (
    Option("recipe", f"one of {', '.join(map(repr, RECIPES))}", lambda value: value in RECIPES, "tensorwise"),
    *FILTER_OPTIONS,
    Option("emulate", "True or False", is_bool),
    Option("fsdp_float8_all_gather", "True or False", is_bool, False),
)
MIXED_OPTIONS = (*CONVERSION_OPTIONS, CACHE_OPTION)


def cuda_capability() -> tuple[int, int]:
    """The current GPU's compute capability. Initialises CUDA, so it runs at selection time only."""
    major, minor = torch.cuda.get_device_capability()
    return major, minor


class Converter:
    """Holds the layer filter options; converts modules and remembers what it did. Subclasses say which layers
    they make (``layer_type``, ``target``), what sizes those take (``rule``) and how to swap them (``swap``)."""

    target: str = "Float8Linear"
    rule: DimensionRule = FP8_RULE
    layer_type: type[torch.nn.Module] | None = None

    def __init__(self, options: dict[str, Any], *, recipe: str, emulate: bool) -> None:
        self.recipe = recipe
        self.emulate = emulate
        self.convert_head: bool = options["convert_head"]
        self.skip: tuple[str, ...] = tuple(options["skip"])
        self.module_filter: ModuleFilter | None = options["module_filter"]
        self.report = ConversionReport(target=self.target)

    def swap(self, module: torch.nn.Module, report: ConversionReport) -> torch.nn.Module:
        raise NotImplementedError

    def convert(self, module: torch.nn.Module, owner: str) -> torch.nn.Module:
        report = plan(
            module,
            convert_head=self.convert_head,
            skip=self.skip,
            module_filter=self.module_filter,
            already=self.layer_type,
            rule=self.rule,
            target=self.target,
        )
        self.report = report
        if report.skipped and not report.converted:
            warn(
                f"{owner}: {report.summary()}; every matmul runs in bfloat16. See the filter options (convert_head,"
                " skip, module_filter) of prec-torchao.",
                PerformanceWarning,
            )
        if not report.converted:
            return module
        return self.swap(module, report)


class Float8Converter(Converter):
    """torchao's ``Float8LinearConfig`` and ``convert_to_float8_training`` behind the common filter."""

    def __init__(self, float8: Any, options: dict[str, Any], *, emulate: bool, cpu_autocast: bool) -> None:
        super().__init__(options, recipe=options["recipe"], emulate=emulate)
        self.float8 = float8
        self.layer_type = float8.Float8Linear
        self.cpu_autocast = cpu_autocast
        self.config = float8_config(
            float8, self.recipe, emulate=emulate, fsdp_float8_all_gather=options["fsdp_float8_all_gather"]
        )

    @override
    def swap(self, module: torch.nn.Module, report: ConversionReport) -> torch.nn.Module:
        return convert_linear_layers(module, self.float8, self.config, report, cpu_autocast=self.cpu_autocast)


class ConvertingPrecision:
    """What every precision of this package adds to its family: Linear layer conversion after the family's own,
    and its report. Listed first in the bases, so ``super()`` reaches the family's methods."""

    converter: Converter
    name: str

    @property
    def emulated(self) -> bool:  # type: ignore[override] - a property over the base's class attribute
        """Low-precision matmuls emulated in high precision (``emulate``): real numerics, not the speed."""
        return self.converter.emulate

    @property
    def conversion(self) -> ConversionReport:
        """What the last :meth:`convert_module` converted and why it kept the other Linear layers."""
        return self.converter.report

    @override
    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return self.converter.convert(super().convert_module(module), self.name)  # type: ignore[misc]

    @override
    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, recipe={self.converter.recipe!r})"


class Float8MixedPrecision(ConvertingPrecision, MixedPrecision):
    """fp8-mixed: float32 weights and optimizer state, bfloat16 autocast, Float8Linear matmuls in float8."""

    def __init__(self, device_type: str, converter: Float8Converter, *, cache_enabled: bool = True) -> None:
        super().__init__("fp8-mixed", device_type, torch.bfloat16, cache_enabled=cache_enabled)
        self.converter = converter


class Float8TruePrecision(ConvertingPrecision, TruePrecision):
    """fp8-bf16-true: bfloat16 weights, gradients and optimizer state; Float8Linear matmuls in float8."""

    def __init__(self, device_type: str, converter: Float8Converter) -> None:
        super().__init__("fp8-bf16-true", torch.bfloat16, device_type=device_type)
        self.converter = converter


def _require_fp8_gpu(name: str, accelerator: Accelerator) -> None:
    capability = cuda_capability()
    if capability >= MIN_CAPABILITY:
        return
    describe = getattr(accelerator, "device_description", None)
    device = describe() if callable(describe) else f"this GPU (compute capability {capability[0]}.{capability[1]})"
    raise UnsupportedPrecisionError(
        f"precision={name!r} needs fp8 tensor cores: an NVIDIA GPU with compute capability 8.9 or newer (Ada"
        f" Lovelace such as L4/L40/RTX 4090, Hopper H100/H200, Blackwell), but {device} has none. Use"
        " precision='bf16-mixed' instead (or precision_options={'emulate': True} to check the fp8 numerics slowly)."
    )


def _emulate(name: str, accelerator: Accelerator, options: dict[str, Any]) -> bool:
    """Whether to emulate the fp8 matmuls: always on cpu (warned unless asked for), never on cuda unless asked."""
    emulate = options.get("emulate")
    if accelerator.name != "cuda":
        if emulate is False:
            raise ConfigurationError(
                f"precision_options for {name}: emulate=False needs fp8 kernels, which only run on a CUDA GPU"
                " (compute capability 8.9+). On cpu, fp8 is emulated: leave emulate out or pass emulate=True."
            )
        if emulate is None:
            warn(
                f"precision={name!r} on {accelerator.name} emulates fp8 matmuls in float32: the numerics are the"
                " real fp8 ones, the speed is not (several times slower than 32-true). Use it to test fp8 training"
                " before renting a GPU; pass precision_options={'emulate': True} to say so and silence this.",
                PerformanceWarning,
            )
        return True
    if not emulate:
        _require_fp8_gpu(name, accelerator)
    elif not accelerator.supports_dtype(torch.bfloat16):
        raise UnsupportedPrecisionError(
            f"precision={name!r} computes in bfloat16 around the fp8 matmuls, which this GPU lacks (compute"
            " capability 8.0+ is needed). Use precision='16-mixed' instead."
        )
    return bool(emulate)


def check_filter_options(name: str, options: dict[str, Any]) -> None:
    """``module_filter`` replaces ``skip`` and ``convert_head``: passing both is a mistake, not a combination."""
    if options["module_filter"] is not None and (options["skip"] or options["convert_head"]):
        raise ConfigurationError(
            f"precision_options for {name}: module_filter replaces skip and convert_head; pass one or the other."
        )


def _converter(name: str, accelerator: Accelerator, options: dict[str, Any], *, mixed: bool) -> Float8Converter:
    check_filter_options(name, options)
    if options["fsdp_float8_all_gather"] and options["recipe"] != "tensorwise":
        raise ConfigurationError(
            f"precision_options for {name}: fsdp_float8_all_gather=True needs recipe='tensorwise'"
            f" (got {options['recipe']!r}); torchao all-gathers float8 weights with one scale per tensor only."
        )
    emulate = _emulate(name, accelerator, options)
    float8 = load_float8()
    return Float8Converter(float8, options, emulate=emulate, cpu_autocast=mixed and accelerator.name != "cuda")


def check_available(name: str, reason: str | None = None) -> None:
    """Refuse a name of this package where torchao (or the part of it the name needs: ``reason``) cannot run."""
    reason = reason or unavailable_reason()
    if reason is not None:
        raise UnsupportedPrecisionError(f"precision={name!r} comes from prec-torchao, which cannot run here: {reason}.")


def fp8_mixed(accelerator: Accelerator, **options: Any) -> Precision:
    """fp8-mixed: float32 master weights, bfloat16 autocast, fp8 matmuls in the converted Linear layers."""
    check_available("fp8-mixed")
    options = check_options("fp8-mixed", options, MIXED_OPTIONS)
    converter = _converter("fp8-mixed", accelerator, options, mixed=True)
    return Float8MixedPrecision(
        accelerator.device_type or accelerator.name, converter, cache_enabled=options["cache_enabled"]
    )


def fp8_bf16_true(accelerator: Accelerator, **options: Any) -> Precision:
    """fp8-bf16-true: bf16-true (bfloat16 weights and optimizer state) with fp8 matmuls in converted layers."""
    check_available("fp8-bf16-true")
    options = check_options("fp8-bf16-true", options, CONVERSION_OPTIONS)
    converter = _converter("fp8-bf16-true", accelerator, options, mixed=False)
    return Float8TruePrecision(accelerator.device_type or accelerator.name, converter)
