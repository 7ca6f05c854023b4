"""Shared fixtures and the one small training script every test trains, under Lightning and under prec.

The two modules hold the same layers built from the same seed and do the same step, so their final weights can be
compared bit for bit. Everything runs on the CPU; nothing here depends on the machine being fast or having bf16
instructions (the comparison is of two runs on the same machine).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import prec

SEED = 1234
BATCHES = 4
BATCH_SIZE = 8


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("cuda") is not None and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both Trainers write logs and checkpoints under the working directory: keep them out of the source tree."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _default_dtype_is_restored() -> Iterator[None]:
    """The true precisions change torch's default dtype only inside their contexts."""
    before = torch.get_default_dtype()
    yield
    after = torch.get_default_dtype()
    torch.set_default_dtype(before)
    assert after == before, f"the default dtype leaked out of the test: {after} (was {before})"


def build_layers() -> nn.Sequential:
    """A couple of Linear + LayerNorm, built from a fixed seed."""
    torch.manual_seed(SEED)
    return nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 32), nn.LayerNorm(32), nn.Linear(32, 1))


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
        assert torch.equal(got[name], tensor), f"{name} differs: max |diff| {(got[name].float() - tensor.float()).abs().max()}"


@pytest.fixture
def quiet() -> Iterator[None]:
    """Lightning's advice about dataloader workers is noise here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
        yield


def half_mixed_cpu(accelerator: prec.Accelerator, **options: Any) -> prec.Precision:
    """A third party's 16-mixed on the CPU: float16 autocast with a grad scaler (prec-cpu leaves it out)."""
    return prec.MixedPrecision("16-mixed", "cpu", torch.float16, scaler=True, **options)


@pytest.fixture
def third_party_16_mixed() -> Iterator[None]:
    """Register ``16-mixed`` on the CPU in code, as a third-party plugin would, for one test."""

    class ThirdParty:
        @prec.hookimpl
        def prec_register_precisions(self, register: Callable[..., None]) -> None:
            register("16-mixed", "cpu", half_mixed_cpu, priority=100)

    name = prec.register_plugin(ThirdParty(), name="cpu16-in-process")
    yield
    prec.unregister_plugin(name)
    prec.reset_registry()
