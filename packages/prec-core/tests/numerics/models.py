"""Small models with one known numerical problem each, shared by the numerics tests (loaded by path)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

import prec


def mse(model: nn.Module, batch: Any) -> Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x).float(), y.float())


class Overflowing(nn.Module):
    """``big``'s outputs reach ~1e5, beyond float16's 65504; a LayerNorm brings them back."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.small = nn.Linear(8, 16)
        self.big = nn.Linear(16, 16)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 4)
        with torch.no_grad():
            self.big.weight.mul_(50.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.norm(self.big(self.small(x) * 1e4)))


class WithNorms(nn.Module):
    """Linear layers and LayerNorms whose gains start at 1.0, where bfloat16's spacing is 2**-7."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(16, 32)
        self.norm = nn.LayerNorm(32)
        self.out = nn.Linear(32, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.norm(torch.tanh(self.inp(x))))


class Outlier(nn.Module):
    """``outlier``'s input has one channel 1e5 times larger than the rest (which that layer's weights ignore): a
    per-tensor fp8 scale set by that channel leaves the others a few coarse steps or zero."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first = nn.Linear(16, 32)
        self.outlier = nn.Linear(32, 32)
        self.last = nn.Linear(32, 4)
        gain = torch.ones(32)
        gain[0] = 1e5
        self.register_buffer("gain", gain)
        with torch.no_grad():
            self.outlier.weight[:, 0] = 0.0

    def forward(self, x: Tensor) -> Tensor:
        return self.last(torch.relu(self.outlier(self.first(x) * self.gain)))


def batch(inputs: int = 8, outputs: int = 4, size: int = 64, seed: int = 1) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, inputs, generator=generator), torch.randn(size, outputs, generator=generator)


class TrainedWithNorms(prec.TrainingModule):
    """:class:`WithNorms` as a module the Trainer fits (MSE loss, SGD): the callbacks' tests train it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = WithNorms()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return mse(self.net, batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)
