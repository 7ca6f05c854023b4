"""DriftCheck through the Trainer: what it logs, when it warns, what it refuses."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from _modules import load_module

import prec

models = load_module(Path(__file__).with_name("models.py"), "_prec_numerics_models")


class Net(prec.TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = models.WithNorms()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = models.mse(self.net, batch)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(check: prec.DriftCheck, precision: str = "bf16-true", steps: int = 4, **kwargs: Any) -> prec.Trainer:
    trainer = prec.Trainer(accelerator="cpu", precision=precision, max_steps=steps, callbacks=[check], logger=False,
                           enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                           **kwargs)  # fmt: skip
    trainer.fit(Net(), [models.batch(16, 4, size=16, seed=seed) for seed in range(steps)])
    return trainer


def test_bf16_true_gradients_stay_close_and_the_reference_step_logs_nothing_into_the_run() -> None:
    check = prec.DriftCheck(every_n_steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", prec.PrecWarning)
        trainer = _fit(check)
    assert check.checked_steps == [1, 3]
    assert check.last_scalars["drift/net.norm/cosine"] > 0.999
    assert 0 < check.last_scalars["drift/net.norm/relative_error"] < 0.05
    assert "drift/loss_gap" in trainer.callback_metrics
    last = check.reports[-1]  # the last step was checked: the logged loss is the run's, not the reference's
    assert last.low_loss != last.reference_loss
    assert float(trainer.callback_metrics["loss"]) == last.low_loss


def test_a_threshold_no_16_bit_gradient_meets_warns_naming_the_layers() -> None:
    with pytest.warns(prec.PrecWarning, match=r"DriftCheck at optimizer step 0.*net\.norm: gradient cosine"):
        _fit(prec.DriftCheck(every_n_steps=1, threshold=1.0), steps=1)


def test_32_true_is_checked_against_float64() -> None:
    check = prec.DriftCheck(every_n_steps=1)
    _fit(check, precision="32-true", steps=1)
    assert check.last_scalars["drift/net.out/relative_error"] < 1e-5


def test_gradient_accumulation_is_refused() -> None:
    with pytest.raises(prec.ConfigurationError, match="accumulate_grad_batches=2"):
        _fit(prec.DriftCheck(), accumulate_grad_batches=2)


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"every_n_steps": 0}, "every_n_steps"),
        ({"threshold": 2.0}, "threshold"),
        ({"max_loss_gap": -1}, "max_loss_gap"),
    ],
)
def test_bad_arguments_are_configuration_errors_naming_them(arguments: dict[str, Any], named: str) -> None:
    with pytest.raises(prec.ConfigurationError, match=named):
        prec.DriftCheck(**arguments)
