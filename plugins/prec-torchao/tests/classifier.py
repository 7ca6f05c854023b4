"""The small model the fp8 and low-bit training tests share: two residual MLP blocks (32x64, 64x32: every format
takes them), a norm and a 32x4 head (``head``, kept in high precision by default), and its data.

pytest imports test modules by path (``--import-mode=importlib``): the tests load this file with
``_modules.load_module``.
"""

from __future__ import annotations

from typing import Any

import torch

import prec

WIDTH, HIDDEN, CLASSES = 32, 64, 4
Batches = list[tuple[torch.Tensor, torch.Tensor]]


def data(batches: int, batch_size: int, seed: int = 0) -> Batches:
    """``batches`` batches of ``batch_size`` rows whose class a fixed random projection decides."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batches * batch_size, WIDTH, generator=generator)
    y = (x @ torch.randn(WIDTH, CLASSES, generator=generator)).argmax(dim=1)
    return list(zip(x.split(batch_size), y.split(batch_size), strict=True))


def block() -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(WIDTH, HIDDEN), torch.nn.GELU(), torch.nn.Linear(HIDDEN, WIDTH))


class Classifier(prec.TrainingModule):
    """Two residual MLP blocks, a norm and an output head; built in ``configure_model`` when asked, to test
    conversion of a model the Trainer builds."""

    def __init__(self, build_in_configure_model: bool = False, lr: float = 3e-3) -> None:
        super().__init__()
        self.lr = lr
        self.losses: list[float] = []
        if not build_in_configure_model:
            self.configure_model()

    def configure_model(self) -> None:
        if hasattr(self, "blocks"):
            return
        torch.manual_seed(0)
        self.blocks = torch.nn.ModuleList([block(), block()])
        self.norm = torch.nn.LayerNorm(WIDTH)
        self.head = torch.nn.Linear(WIDTH, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.blocks:
            x = x + layer(x)
        return self.head(self.norm(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self(x).float(), y)
        self.losses.append(loss.item())
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self(x).float(), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr)
