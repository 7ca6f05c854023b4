"""The one small training script every test trains, under Lightning and under prec.

The two modules hold the same layers built from the same seed and do the same step, so their final weights can be
compared bit for bit. Nothing here depends on the machine being fast or having bf16 instructions: the comparisons
are between two runs on the same machine. Test modules load this file with ``_modules.load_module`` (pytest runs in
importlib mode, where test files cannot import one another by name).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import prec

SEED = 1234
BATCHES = 4
BATCH_SIZE = 8


def build_layers() -> nn.Sequential:
    """A couple of Linear + LayerNorm, built from a fixed seed."""
    torch.manual_seed(SEED)
    return nn.Sequential(
        nn.Linear(16, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 32), nn.LayerNorm(32), nn.Linear(32, 1)
    )


def loader(poison_batch: int | None = None) -> DataLoader[Any]:
    """``BATCHES`` fixed batches; ``poison_batch`` makes one batch's inputs inf (its gradients become NaN)."""
    generator = torch.Generator().manual_seed(SEED + 1)
    x = torch.randn(BATCHES * BATCH_SIZE, 16, generator=generator)
    y = x[:, :4].sum(1, keepdim=True) + 0.1 * torch.randn(BATCHES * BATCH_SIZE, 1, generator=generator)
    if poison_batch is not None:
        x[poison_batch * BATCH_SIZE : (poison_batch + 1) * BATCH_SIZE] = float("inf")
    return DataLoader(TensorDataset(x, y), batch_size=BATCH_SIZE, shuffle=False)


def configure(parameters: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(parameters, lr=1e-2, weight_decay=0.01)


def step_loss(layers: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    return nn.functional.mse_loss(layers(x).float(), y.float())


class LitNet(L.LightningModule):
    """The script as a LightningModule."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = build_layers()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = step_loss(self.layers, batch)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return configure(self.parameters())


class PrecNet(prec.TrainingModule):
    """The same script as a prec.TrainingModule."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = build_layers()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return step_loss(self.layers, batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return configure(self.parameters())


def lightning_trainer(plugin: Any, **kwargs: Any) -> L.Trainer:
    """A quiet CPU Lightning Trainer with ``plugin`` as its precision plugin."""
    settings: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        **kwargs,
    }
    return L.Trainer(plugins=[plugin], **settings)


def prec_trainer(precision: str, **kwargs: Any) -> prec.Trainer:
    settings: dict[str, Any] = {
        "accelerator": "cpu",
        "max_epochs": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        **kwargs,
    }
    return prec.Trainer(precision=precision, **settings)


def weights(module: nn.Module) -> dict[str, Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def assert_bitwise_equal(got: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype, name
        assert torch.equal(got[name], tensor), (
            f"{name} differs: max |diff| {(got[name].float() - tensor.float()).abs().max()}"
        )
