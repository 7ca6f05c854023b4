"""validate/test/predict under the precision's context, configure_model per run, batch limits and when
validation runs."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import prec

pytestmark = pytest.mark.filterwarnings("ignore::prec.errors.PerformanceWarning")


def make_loader(n: int = 32, batch_size: int = 4) -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=generator)
    return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=batch_size)


def make_trainer(**kwargs: Any) -> prec.Trainer:
    kwargs.setdefault("max_epochs", 1)
    kwargs.setdefault("num_sanity_val_steps", 0)  # these tests count validation batches of the epochs themselves
    return prec.Trainer(accelerator="cpu", enable_progress_bar=False, logger=False, **kwargs)


class Recorder(prec.TrainingModule):
    """Builds its layer in configure_model (idempotently) and records the context each step ran in."""

    def __init__(self) -> None:
        super().__init__()
        self.layer: torch.nn.Linear | None = None
        self.configure_calls = 0
        self.contexts: dict[str, set[tuple[bool, bool, bool, torch.dtype]]] = {}
        self.batches: dict[str, int] = {}
        self.validation_at: list[tuple[int, int]] = []

    def configure_model(self) -> None:
        self.configure_calls += 1
        if self.layer is None:  # idempotent: every run calls it again
            self.layer = torch.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.layer is not None
        return self.layer(x)

    def _record(self, stage: str, batch: Any) -> torch.Tensor:
        out = self(batch[0])
        state = (
            torch.is_grad_enabled(),
            torch.is_inference_mode_enabled(),
            torch.is_autocast_enabled("cpu"),
            out.dtype,
        )
        self.contexts.setdefault(stage, set()).add(state)
        self.batches[stage] = self.batches.get(stage, 0) + 1
        return out

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return torch.nn.functional.mse_loss(self._record("train", batch).float(), batch[1])

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._record("validate", batch)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._record("test", batch)

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._record("predict", batch)

    def on_validation_epoch_start(self) -> None:
        self.validation_at.append((self.trainer.current_epoch, self.trainer.state.batches_seen))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_evaluation_stages_run_under_the_forward_context_without_gradients() -> None:
    model = Recorder()
    trainer = make_trainer(precision="bf16-mixed", limit_train_batches=2)
    trainer.fit(model, make_loader(), make_loader(8))
    trainer.validate(model, make_loader(8))
    trainer.test(model, make_loader(8))
    outputs = trainer.predict(model, make_loader(8))
    bf16 = torch.bfloat16
    assert model.contexts["train"] == {(True, False, True, bf16)}
    # validation inside fit runs under no_grad; standalone evaluation under inference mode
    assert model.contexts["validate"] == {(False, False, True, bf16), (False, True, True, bf16)}
    assert model.contexts["test"] == {(False, True, True, bf16)}
    assert model.contexts["predict"] == {(False, True, True, bf16)}
    assert len(outputs) == 2 and outputs[0].dtype == torch.float32  # convert_output


def test_configure_model_is_called_by_every_run_and_must_be_idempotent() -> None:
    model = Recorder()
    trainer = make_trainer(max_steps=1)
    trainer.fit(model, make_loader())
    layer = model.layer
    trainer.validate(model, make_loader(8))
    trainer.test(model, make_loader(8))
    trainer.predict(model, make_loader(8))
    assert model.configure_calls == 4 and model.layer is layer


@pytest.mark.parametrize(("limit", "expected"), [(3, 3), (0.25, 2), (1.0, 8), (0, 0)])
def test_limit_train_batches(limit: int | float, expected: int) -> None:
    model = Recorder()
    make_trainer(limit_train_batches=limit).fit(model, make_loader())
    assert model.batches.get("train", 0) == expected


@pytest.mark.parametrize(("limit", "expected"), [(1, 1), (0.5, 2)])
def test_limit_val_batches(limit: int | float, expected: int) -> None:
    model = Recorder()
    make_trainer(limit_val_batches=limit, limit_train_batches=1).fit(model, make_loader(), make_loader(16))
    assert model.batches["validate"] == expected


def test_check_val_every_n_epoch() -> None:
    model = Recorder()
    make_trainer(max_epochs=4, check_val_every_n_epoch=2).fit(model, make_loader(8), make_loader(8))
    assert model.validation_at == [(1, 2), (3, 2)]


@pytest.mark.parametrize(("interval", "expected"), [(3, [3, 6, 8]), (0.5, [4, 8]), (0.25, [2, 4, 6, 8])])
def test_val_check_interval_validates_within_the_epoch(interval: int | float, expected: list[int]) -> None:
    model = Recorder()
    make_trainer(val_check_interval=interval).fit(model, make_loader(), make_loader(8))
    assert model.validation_at == [(0, seen) for seen in expected]


def test_bad_val_check_interval_is_a_configuration_error() -> None:
    for value in (0, -1, 1.5):
        with pytest.raises(prec.ConfigurationError, match="val_check_interval"):
            make_trainer(val_check_interval=value)


def test_validation_inside_fit_keeps_training_epoch_means_apart() -> None:
    class Logging(Recorder):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.log("train_value", 1.0, on_epoch=True)
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_value", 5.0)
            self.log("train_value", 100.0)  # same name: must not leak into the training mean

    trainer = make_trainer(val_check_interval=2)
    trainer.fit(Logging(), make_loader(), make_loader(8))
    metrics = trainer.callback_metrics
    assert float(metrics["val_value"]) == 5.0 and float(metrics["train_value"]) == 1.0
