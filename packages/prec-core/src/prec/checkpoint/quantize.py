"""Post-training weight-only quantization of a module's Linear layers through torchao, as plain components.

``int8``: torchao's ``Int8WeightOnlyConfig`` (one symmetric scale per output row). ``int4``: torchao's
``IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))``, group-wise symmetric int4:
torchao 0.18's ``Int4WeightOnlyConfig`` runs only with its CUDA kernels (it needs the ``mslk`` package), the intx
one runs on the CPU, where an export reads its checkpoint. Layers whose input width the group size does not divide
stay unquantized, and are named in what :func:`quantize_linears` returns.
"""

from __future__ import annotations

from typing import Any

import torch

from prec.checkpoint.export import QuantizedWeight
from prec.errors import ConfigurationError

__all__ = ["INT4_GROUP_SIZE", "SCHEMES", "quantize_linears"]

#: The int4 scheme's columns per scale (torchao's usual choice for weight-only int4).
INT4_GROUP_SIZE = 32
#: Export precision -> the scheme name stored in the file.
SCHEMES = {"int8": "int8_weight_only", "int4": "int4_weight_only"}


def quantize_linears(
    module: torch.nn.Module, precision: str, group_size: int = INT4_GROUP_SIZE
) -> tuple[dict[str, QuantizedWeight], list[str]]:
    """Quantize ``module``'s float32 Linear weights in place; returns ``({weight name: components}, [names of
    Linear weights left in float32])``."""
    if precision not in SCHEMES:
        raise ConfigurationError(f"precision={precision!r} is not a quantized export; use one of {sorted(SCHEMES)}.")
    if group_size < 1:
        raise ConfigurationError(f"group_size={group_size} must be a positive number of columns.")
    quantize_, config = _torchao_config(precision, group_size)

    def chosen(layer: torch.nn.Module, _fqn: str) -> bool:
        return isinstance(layer, torch.nn.Linear) and (precision == "int8" or layer.in_features % group_size == 0)

    linears = {name: layer for name, layer in module.named_modules() if isinstance(layer, torch.nn.Linear)}
    left_out = sorted(f"{name}.weight" for name, layer in linears.items() if not chosen(layer, name))
    quantize_(module, config, filter_fn=chosen)
    quantized: dict[str, QuantizedWeight] = {}
    for name, layer in linears.items():
        if f"{name}.weight" in left_out:
            continue
        weight: Any = layer.weight
        quantized[f"{name}.weight" if name else "weight"] = QuantizedWeight(
            scheme=SCHEMES[precision],
            values=weight.qdata.detach().to(torch.int8),
            scale=weight.scale.detach().float(),
            zero_point=weight.zero_point.detach().to(torch.int8),
            block_size=tuple(int(size) for size in weight.block_size),
        )
    return quantized, left_out


def _torchao_config(precision: str, group_size: int) -> tuple[Any, Any]:
    try:
        from torchao.quantization import (
            Int8WeightOnlyConfig,
            IntxWeightOnlyConfig,
            PerGroup,
            quantize_,
        )
    except ImportError as error:
        raise ConfigurationError(
            f"an {precision} export quantizes through torchao, which is not installed here: pip install torchao"
            f" (or prec-torchao). torchao said: {error}"
        ) from error
    if precision == "int8":
        return quantize_, Int8WeightOnlyConfig()
    return quantize_, IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))
