"""The MXFP8 and int8 Linear layers: ``nn.Linear`` subclasses whose matmuls run through torchao's training functions.

A converted layer keeps its ``weight`` and ``bias`` Parameters (plain tensors, the same objects), so state dicts,
optimizers and checkpoints see an ``nn.Linear``. torchao's own layers read no autocast state (its MXFP8 weight
wrapper also drops a Linear's bias in ``F.linear``), so these layers do what autocast would: cast input, weight and
bias to the compute dtype and run the torchao function with autocast off. The function is held by the layer
(``matmul``), so importing this module imports no torchao.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from typing_extensions import override

#: MXFP8 scales blocks of this many elements; the token dimension is one in the weight gradient's matmul.
MX_BLOCK = 32


class MXFP8TrainingLinear(torch.nn.Linear):
    """An ``nn.Linear`` whose three matmuls (output, input and weight gradients) run in MXFP8 through torchao's MX
    training recipe (``MXFP8TrainingOpConfig``): e4m3 elements with one power-of-two scale per 32, dynamic.

    Computes in the recipe's ``out_dtype`` (bfloat16, what the MX kernels return). Tokens are padded with zero rows
    to a multiple of 32 for the weight gradient's blocks: a zero row changes no block's scale, so the result is
    the unpadded one, and any batch size works.
    """

    config: Any
    matmul: Callable[..., torch.Tensor]

    @override
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        dtype = self.config.out_dtype
        with torch.autocast(input.device.type, enabled=False):
            rows = input.reshape(-1, self.in_features).to(dtype)
            count = rows.shape[0]
            padding = -count % MX_BLOCK
            if padding:
                rows = torch.nn.functional.pad(rows, (0, 0, 0, padding))
            output = self.matmul(
                rows,
                self.weight.to(dtype),
                kernel_preference=self.config.kernel_preference,
                scale_calculation_mode=self.config.scale_calculation_mode,
                wgrad_with_hp=self.config.wgrad_with_hp,
            )
            if padding:
                output = output[:count]
            output = output.reshape(*input.shape[:-1], self.out_features)
            if self.bias is not None:
                output = output + self.bias.to(dtype)
        return output


class Int8TrainingLinear(torch.nn.Linear):
    """An ``nn.Linear`` whose matmuls run in int8 through torchao's int8 mixed-precision training: input, weight
    and output gradient quantised row-wise (absmax / 127) on every call, int8 x int8 -> int32 matmuls, rescaled.

    Under autocast it computes in the autocast dtype (bfloat16 for int8-mixed), as the layers around it do.
    """

    config: Any
    matmul: Any  # torchao's autograd Function (its ``apply``)

    @override
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        device = input.device.type
        if not torch.is_autocast_enabled(device):
            return self.matmul.apply(input, self.weight, self.bias, self.config)
        dtype = torch.get_autocast_dtype(device)
        bias = self.bias.to(dtype) if self.bias is not None else None
        with torch.autocast(device, enabled=False):
            return self.matmul.apply(input.to(dtype), self.weight.to(dtype), bias, self.config)


def swap_layers(
    module: torch.nn.Module, names: list[str], layer_type: type[torch.nn.Linear], **attributes: Any
) -> None:
    """Make the named ``nn.Linear`` layers ``layer_type`` in place, keeping their Parameters, hooks and names."""
    for name in names:
        layer = module.get_submodule(name)
        if isinstance(layer, layer_type):
            continue
        layer.__class__ = layer_type
        for key, value in attributes.items():
            setattr(layer, key, value)
