"""Epoch values of ``self.log(..., on_epoch=True)`` through real fits, as Lightning computes them.

Lightning's epoch value of a ``reduce_fx="mean"`` metric is the mean weighted by batch size,
``sum(value_i * batch_size_i) / sum(batch_size_i)``, with ``batch_size=`` when given and the batch's first
dimension otherwise. The loaders here end with a smaller batch, and the logged values differ per batch, so the
weighted mean differs from the plain mean of the step values: a loop that averaged steps would fail. The expected
numbers were also checked against Lightning 2.6.6 running the same module.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import prec

SIZES = (4, 4, 2)  # ten samples in batches of four: the last batch is smaller
VALUES = (1.0, 2.0, 4.0)  # every sample of batch i holds VALUES[i], so the batch mean is VALUES[i]
CUSTOM = (3, 1, 6)  # batch_size= values that are not the batches' own sizes
EPOCH_OFFSET = 10.0  # epoch e logs VALUES[i] + 10 * e, so every epoch has its own mean


def lightning_mean(values: tuple[float, ...], sizes: tuple[int, ...]) -> float:
    """Lightning's epoch mean: a running ``sum(value * batch_size)`` divided by the summed batch sizes."""
    total = sum((Fraction(v) * b for v, b in zip(values, sizes, strict=True)), Fraction(0))
    return float(total / sum(sizes))


def shifted(epoch: int) -> tuple[float, ...]:
    return tuple(value + EPOCH_OFFSET * epoch for value in VALUES)


def loader() -> DataLoader[Any]:
    x = torch.cat([torch.full((size, 1), value) for value, size in zip(VALUES, SIZES, strict=True)])
    return DataLoader(TensorDataset(x, x), batch_size=SIZES[0])


class Logging(prec.TrainingModule):
    """Logs each batch's value three ways in training and in evaluation: with its size as ``batch_size``, with
    the size inferred, and with an unrelated ``batch_size``."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def value(self, batch: Any) -> torch.Tensor:
        return batch[0].mean() + EPOCH_OFFSET * self.current_epoch

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        value = self.value(batch)
        self.log("x", value, on_epoch=True, batch_size=len(batch[0]))  # on_step too: x_step, x_epoch and x
        self.log("inferred", value, on_step=False, on_epoch=True)
        self.log("custom", value, on_step=False, on_epoch=True, batch_size=CUSTOM[batch_idx])
        return torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        value = self.value(batch)
        self.log("val_x", value, batch_size=len(batch[0]))  # on_epoch is the default in evaluation
        self.log("val_inferred", value)
        self.log("val_custom", value, batch_size=CUSTOM[batch_idx])

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.log("test_x", batch[0].mean(), batch_size=len(batch[0]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)  # the weights do not matter here


class Recorder(prec.Callback):
    """``trainer.callback_metrics`` as the hooks that read epoch values see it (checkpointing, early stopping)."""

    def __init__(self) -> None:
        self.train_epoch_end: list[dict[str, float]] = []
        self.validation_end: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: prec.Trainer, module: prec.TrainingModule) -> None:
        self.train_epoch_end.append({k: float(v) for k, v in trainer.callback_metrics.items()})

    def on_validation_end(self, trainer: prec.Trainer, module: prec.TrainingModule) -> None:
        if not trainer.sanity_checking:
            self.validation_end.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def fit(epochs: int = 2) -> tuple[prec.Trainer, Logging, Recorder]:
    recorder = Recorder()
    trainer = prec.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[recorder],
    )
    model = Logging()
    trainer.fit(model, loader(), loader())
    return trainer, model, recorder


def test_the_cases_tell_a_weighted_mean_from_a_plain_one() -> None:
    assert lightning_mean(VALUES, SIZES) == 2.0
    assert sum(VALUES) / len(VALUES) != pytest.approx(2.0)
    assert lightning_mean(VALUES, CUSTOM) == pytest.approx(2.9)


def test_training_epoch_values_are_means_weighted_by_batch_size() -> None:
    _, _, recorder = fit()
    for epoch, metrics in enumerate(recorder.train_epoch_end):
        values = shifted(epoch)
        assert metrics["x_epoch"] == pytest.approx(lightning_mean(values, SIZES), rel=1e-6)
        assert metrics["x"] == metrics["x_epoch"]  # after the epoch, the plain name holds the epoch value
        assert metrics["x_step"] == values[-1]
        assert metrics["inferred"] == pytest.approx(lightning_mean(values, SIZES), rel=1e-6)
        assert metrics["custom"] == pytest.approx(lightning_mean(values, CUSTOM), rel=1e-6)
    assert len(recorder.train_epoch_end) == 2


def test_validation_epoch_values_are_means_weighted_by_batch_size() -> None:
    """The sanity check's two batches before training count for nothing: each validation run averages its own."""
    _, _, recorder = fit()
    assert len(recorder.validation_end) == 2
    for epoch, metrics in enumerate(recorder.validation_end):
        values = shifted(epoch)
        assert metrics["val_x"] == pytest.approx(lightning_mean(values, SIZES), rel=1e-6)
        assert metrics["val_inferred"] == pytest.approx(lightning_mean(values, SIZES), rel=1e-6)
        assert metrics["val_custom"] == pytest.approx(lightning_mean(values, CUSTOM), rel=1e-6)


def test_callback_metrics_after_fit_hold_the_last_epochs_values() -> None:
    trainer, _, _ = fit()
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    last = shifted(1)
    expected = {
        "x": lightning_mean(last, SIZES),
        "x_epoch": lightning_mean(last, SIZES),
        "x_step": last[-1],
        "inferred": lightning_mean(last, SIZES),
        "custom": lightning_mean(last, CUSTOM),
        "val_x": lightning_mean(last, SIZES),
        "val_inferred": lightning_mean(last, SIZES),
        "val_custom": lightning_mean(last, CUSTOM),
    }
    assert metrics == pytest.approx(expected, rel=1e-6)


def test_during_an_epoch_the_plain_name_is_the_latest_step_value() -> None:
    """In the second epoch's validation, ``x`` (logged with on_step and on_epoch) is that epoch's latest step
    value, as in Lightning, not the first epoch's mean; ``x_epoch`` still holds the first epoch's mean."""
    _, _, recorder = fit()
    second = recorder.validation_end[1]
    assert second["x"] == second["x_step"] == shifted(1)[-1]
    assert second["x_epoch"] == pytest.approx(lightning_mean(shifted(0), SIZES), rel=1e-6)


def test_validate_and_test_return_the_weighted_means() -> None:
    trainer, model, _ = fit(epochs=1)
    values = shifted(1)  # after one epoch, current_epoch is 1
    results = trainer.validate(model, loader())
    expected = {
        "val_x": lightning_mean(values, SIZES),
        "val_inferred": lightning_mean(values, SIZES),
        "val_custom": lightning_mean(values, CUSTOM),
    }
    assert len(results) == 1 and results[0] == pytest.approx(expected, rel=1e-6)
    assert {name: float(value) for name, value in trainer.callback_metrics.items()} == pytest.approx(expected)

    tested = trainer.test(model, loader())
    assert tested == [{"test_x": pytest.approx(lightning_mean(VALUES, SIZES), rel=1e-6)}]
    assert float(trainer.callback_metrics["test_x"]) == pytest.approx(2.0)
