"""Whether torchao (and its fp8, MXFP8 and int8 training) can be used here, decided without importing it.

``prec list`` calls every plugin's registration hook, and importing torchao takes seconds (it loads its kernels and
registers many ops), so registration only asks the import system and the installed metadata (through
:class:`prec.plugin.Requirement`, as every plugin with an optional dependency does). The real import happens once,
when a Trainer selects one of this package's precisions; a torchao that fails there (built for another torch) is
reported with the error it raised.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prec.errors import UnsupportedPrecisionError
from prec.plugin import Requirement, version_tuple

#: The oldest torchao release this package is tested with (torchao 0.18 pairs with torch 2.13).
MIN_TORCHAO = "0.18.0"
INSTALL_HINT = f"pip install 'torchao>={MIN_TORCHAO}' (the torchao release built for your torch)"
#: torchao logs a warning for every optional kernel library it cannot load (the CUDA ones, on a CPU torch), and
#: torch one for a deprecated registration torchao makes; neither says anything about training.
QUIET_LOGGERS = ("torchao", "torch.utils._pytree")
TORCHAO = Requirement(
    "torchao",
    plugin="prec-torchao",
    minimum=MIN_TORCHAO,
    install_hint=INSTALL_HINT,
    quiet=QUIET_LOGGERS,
)
#: Where torchao 0.18 keeps MXFP8 training (Linear layers and grouped matmuls), and int8 mixed-precision training.
MX_PACKAGE = "torchao.prototype.moe_training"
INT8_MODULE = "torchao.prototype.quantized_training.int8_mixed_precision"
#: Real MXFP8 matmuls: Blackwell tensor cores (compute capability 10.0+) and torchao's kernels built for CUDA 12.8+.
MIN_MX_CAPABILITY = (10, 0)
MIN_MX_CUDA = (12, 8)


def torchao_version() -> str | None:
    """The installed torchao's version from its metadata, or ``None`` if it has none."""
    return TORCHAO.version()


def unavailable_reason() -> str | None:
    """Why prec-torchao cannot work here (torchao missing or too old), or ``None``. Imports nothing."""
    return TORCHAO.unavailable_reason()


@dataclass(frozen=True)
class Float8Api:
    """The three pieces of torchao this package uses. ``Float8Linear`` is not in ``torchao.float8``'s public names;
    it is the class ``convert_to_float8_training`` creates, needed to recognise converted layers."""

    convert_to_float8_training: Any
    Float8LinearConfig: Any
    Float8Linear: type


@dataclass(frozen=True)
class MXApi:
    """torchao's MXFP8 training recipe: its config and recipes, and the autograd function its ``MXFP8Linear`` and
    MXFP8 weight wrapper both call (dynamic MXFP8 casts of input, weight and gradient, then the scaled matmuls)."""

    MXFP8TrainingOpConfig: Any
    MXFP8TrainingRecipe: Any
    to_mxfp8_then_scaled_mm: Any


@dataclass(frozen=True)
class Int8Api:
    """torchao's int8 mixed-precision training: its config and the autograd function its
    ``Int8MixedPrecisionTrainingLinear`` calls (dynamic row-wise int8 casts, int8 matmuls in forward and backward)."""

    Int8MixedPrecisionTrainingConfig: Any
    linear_function: Any


def load_float8() -> Float8Api:
    """Import ``torchao.float8``, or raise :class:`UnsupportedPrecisionError` saying why it cannot be used."""

    def build() -> Float8Api:
        float8 = importlib.import_module("torchao.float8")
        linear = importlib.import_module("torchao.float8.float8_linear")
        return Float8Api(float8.convert_to_float8_training, float8.Float8LinearConfig, linear.Float8Linear)

    return TORCHAO.load("fp8", build)


def load_mx() -> MXApi:
    """Import torchao's MXFP8 training (``torchao.prototype.moe_training`` since 0.18), or raise
    :class:`UnsupportedPrecisionError` saying why it cannot be used."""

    def build() -> MXApi:
        config = importlib.import_module(f"{MX_PACKAGE}.config")
        linear = importlib.import_module(f"{MX_PACKAGE}.mxfp8_linear")
        return MXApi(config.MXFP8TrainingOpConfig, config.MXFP8TrainingRecipe, linear._to_mxfp8_then_scaled_mm)

    reason = mx_unavailable_reason()
    if reason is not None:
        raise UnsupportedPrecisionError(f"mxfp8 precisions need torchao's MX training: {reason}.")
    return TORCHAO.load("mxfp8", build)


def load_int8() -> Int8Api:
    """Import torchao's int8 mixed-precision training, or raise :class:`UnsupportedPrecisionError` saying why."""

    def build() -> Int8Api:
        module = importlib.import_module(INT8_MODULE)
        return Int8Api(module.Int8MixedPrecisionTrainingConfig, module._Int8MixedPrecisionTrainingLinearFunction)

    return TORCHAO.load("int8", build)


def _torchao_file(relative: str) -> bool:
    """Whether the installed torchao ships ``relative`` (a path inside the package), found without importing it."""
    spec = importlib.util.find_spec("torchao")
    locations = spec.submodule_search_locations if spec is not None else None
    return any((Path(location) / relative).is_file() for location in locations or ())


def mx_unavailable_reason() -> str | None:
    """Why torchao's MXFP8 training cannot be used here (no usable torchao, or one without it), or ``None``.
    Imports nothing."""
    reason = unavailable_reason()
    if reason is not None:
        return reason
    if not _torchao_file(MX_PACKAGE.replace(".", "/").removeprefix("torchao/") + "/mxfp8_linear.py"):
        return (
            f"torchao {torchao_version() or '(unknown version)'} has no {MX_PACKAGE}.mxfp8_linear (MXFP8 training"
            f" moved there in torchao 0.18); {INSTALL_HINT}"
        )
    return None


def mx_gpu_reason(capability: tuple[int, int], cuda_version: str | None) -> str | None:
    """Why a GPU of compute ``capability`` with CUDA ``cuda_version`` cannot run real MXFP8 matmuls, or ``None``.

    MX block-scaled tensor cores (one e8m0 scale per 32 elements) arrived with Blackwell, compute capability 10.0;
    torchao's MXFP8 cast kernels also need CUDA 12.8. Pure: the caller reads the GPU (see ``cuda_capability``).
    """
    if capability < MIN_MX_CAPABILITY:
        needed = ".".join(map(str, MIN_MX_CAPABILITY))
        return (
            f"MXFP8 matmuls need MX tensor cores: compute capability {needed} or newer (Blackwell: B200, GB200,"
            f" RTX 50xx), but this GPU has compute capability {capability[0]}.{capability[1]}"
        )
    if cuda_version is None or version_tuple(cuda_version) < MIN_MX_CUDA:
        needed = ".".join(map(str, MIN_MX_CUDA))
        return f"torchao's MXFP8 kernels need a torch built with CUDA {needed}+, this one has CUDA {cuda_version}"
    return None
