"""``precision="auto"`` on the CPU accelerator.

This machine's CPU has no native bfloat16, so the "CPU with native bf16" case is simulated by replacing
``prec_cpu.native_bf16`` (the flag probe); the Trainer, the precision and the training run are real.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch

import prec
import prec_cpu
from prec.errors import PerformanceWarning


class _Line(prec.TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.seen_dtype = self.layer(x).dtype
        return torch.nn.functional.mse_loss(self.layer(x).float(), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.fixture
def cpu_bf16(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """Set the simulated native-bf16 flag with ``cpu_bf16(True)``; the real probe's cache is cleared after."""

    real_probe = prec_cpu.native_bf16

    def set_flag(native: bool) -> None:
        real_probe.cache_clear()
        monkeypatch.setattr(prec_cpu, "native_bf16", lambda: native)

    yield set_flag
    real_probe.cache_clear()


def _fit(trainer: prec.Trainer) -> _Line:
    model = _Line()
    x = torch.randn(8, 4)
    trainer.fit(model, [(x, x.sum(1, keepdim=True))] * 2)
    return model


def test_auto_picks_bf16_mixed_on_a_cpu_with_native_bf16(cpu_bf16) -> None:
    cpu_bf16(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerformanceWarning)  # native bf16: no "slower than 32-true" warning
        trainer = prec.Trainer(accelerator="cpu", precision="auto", max_steps=2, enable_progress_bar=False)
    assert trainer.precision == "bf16-mixed"
    assert "bfloat16 natively" in trainer.auto_precision_reason
    model = _fit(trainer)
    assert trainer.global_step == 2
    assert model.seen_dtype == torch.bfloat16 and model.layer.weight.dtype == torch.float32


def test_auto_picks_32_true_on_a_cpu_without_native_bf16(cpu_bf16) -> None:
    cpu_bf16(False)
    trainer = prec.Trainer(accelerator="cpu", precision="auto", max_steps=2, enable_progress_bar=False)
    assert trainer.precision == "32-true"
    assert "no native bfloat16" in trainer.auto_precision_reason
    model = _fit(trainer)
    assert model.seen_dtype == torch.float32


@pytest.mark.parametrize("native", [True, False])
def test_get_precision_auto_agrees_with_the_trainer(cpu_bf16, native: bool) -> None:
    cpu_bf16(native)
    trainer = prec.Trainer(accelerator="cpu", precision="auto", enable_progress_bar=False)
    assert prec.get_precision("auto", accelerator="cpu").name == trainer.precision
    assert prec.get_registry().accelerator("cpu").auto_precision() == (trainer.precision, trainer.auto_precision_reason)


def test_auto_on_this_machine_follows_the_real_probe() -> None:
    prec_cpu.native_bf16.cache_clear()
    expected = "bf16-mixed" if prec_cpu.native_bf16() else "32-true"
    trainer = prec.Trainer(accelerator="cpu", precision="auto", enable_progress_bar=False)
    assert trainer.precision == expected and trainer.auto_precision_reason


def test_an_explicit_precision_has_no_auto_reason() -> None:
    trainer = prec.Trainer(accelerator="cpu", precision="32-true", enable_progress_bar=False)
    assert trainer.auto_precision_reason is None


def test_fit_start_says_what_auto_picked_and_why(cpu_bf16, caplog: pytest.LogCaptureFixture, tmp_path) -> None:
    cpu_bf16(True)
    trainer = prec.Trainer(
        accelerator="cpu", precision="auto", max_steps=2, enable_progress_bar=False, default_root_dir=tmp_path
    )
    with caplog.at_level("INFO", logger="prec"):
        _fit(trainer)
    assert "precision='auto' picked 'bf16-mixed' on cpu" in caplog.text
    assert "natively" in caplog.text
