"""A fit at every CPU precision, the hook order, and what the Trainer exposes while it runs."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import prec

pytestmark = pytest.mark.filterwarnings("ignore::prec.errors.PerformanceWarning")

PARAM_DTYPES = {"32-true": torch.float32, "bf16-mixed": torch.float32, "bf16-true": torch.bfloat16}
PARAM_DTYPES["16-true"] = torch.float16


def make_loader(n: int = 64, batch_size: int = 16, seed: int = 0) -> DataLoader[Any]:
    weights = torch.randn(8, 1, generator=torch.Generator().manual_seed(1234))  # one target for every loader
    x = torch.randn(n, 8, generator=torch.Generator().manual_seed(seed))
    y = x @ weights
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


class Regressor(prec.TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)
        self.seen: dict[str, Any] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        out = self(x)
        self.seen.setdefault("input", x.dtype)
        self.seen.setdefault("output", out.dtype)
        self.seen.setdefault("new_tensor", torch.zeros(1).dtype)
        self.seen.setdefault("autocast", torch.is_autocast_enabled("cpu"))
        loss = torch.nn.functional.mse_loss(out.float(), y.float())
        self.log("loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self(x).float(), y.float()))

    def on_train_epoch_end(self) -> None:
        self.seen["epoch_end_default_dtype"] = torch.get_default_dtype()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


@pytest.mark.parametrize("precision", list(PARAM_DTYPES))
def test_fit_at_every_cpu_precision(precision: str) -> None:
    torch.manual_seed(0)
    model = Regressor()
    trainer = prec.Trainer(accelerator="cpu", precision=precision, max_epochs=3, enable_progress_bar=False)
    (initial,) = (results["val_loss"] for results in trainer.validate(model, make_loader(32)))
    trainer.fit(model, make_loader(), make_loader(32))
    assert trainer.global_step == 12 and trainer.current_epoch == 3
    assert model.layer.weight.dtype == PARAM_DTYPES[precision]
    compute = {"bf16-mixed": torch.bfloat16, "16-true": torch.float16, "bf16-true": torch.bfloat16}
    assert model.seen["output"] == compute.get(precision, torch.float32)
    assert model.seen["autocast"] is (precision == "bf16-mixed")
    expected_default = PARAM_DTYPES[precision] if precision.endswith("-true") else torch.float32
    assert model.seen["new_tensor"] == expected_default
    assert model.seen["epoch_end_default_dtype"] == torch.float32  # only the steps run in the precision
    metrics = trainer.callback_metrics
    assert set(metrics) == {"loss", "val_loss"} and metrics["loss"].dtype == torch.float32
    assert metrics["val_loss"].item() < initial / 2  # it learned


def test_the_issue_example_trains_with_a_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    class Net(prec.TrainingModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(32, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self(x), y)
            self.log("loss", loss)
            return loss

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = prec.Trainer(accelerator="cpu", precision="bf16-mixed", max_epochs=2)
    trainer.fit(Net(), DataLoader(TensorDataset(torch.randn(256, 32), torch.randn(256, 1)), batch_size=32))
    assert trainer.global_step == 16 and trainer.precision == "bf16-mixed"
    assert "Epoch 1" in capsys.readouterr().err


class Recorder(Regressor):
    """Records every hook in the order the Trainer calls it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __getattribute__(self, name: str) -> Any:
        attribute = super().__getattribute__(name)
        if (name.startswith("on_") or name in _RECORDED) and callable(attribute):
            calls = super().__getattribute__("calls")

            def recorded(*args: Any, **kwargs: Any) -> Any:
                calls.append(name)
                return attribute(*args, **kwargs)

            return recorded
        return attribute

    def configure_model(self) -> None: ...
    def setup(self, stage: str) -> None: ...
    def teardown(self, stage: str) -> None: ...
    def on_fit_start(self) -> None: ...
    def on_fit_end(self) -> None: ...
    def on_train_start(self) -> None: ...
    def on_train_end(self) -> None: ...
    def on_train_epoch_start(self) -> None: ...
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None: ...
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None: ...
    def on_validation_epoch_start(self) -> None: ...
    def on_validation_epoch_end(self) -> None: ...
    def on_before_backward(self, loss: torch.Tensor) -> None: ...
    def on_after_backward(self) -> None: ...
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None: ...
    def on_before_zero_grad(self, optimizer: torch.optim.Optimizer) -> None: ...


_RECORDED = {"configure_model", "configure_optimizers", "setup", "teardown", "training_step", "validation_step"}


def test_hook_order_of_a_fit() -> None:
    model = Recorder()
    trainer = prec.Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=2, enable_progress_bar=False, enable_checkpointing=False
    )
    trainer.fit(model, make_loader(), make_loader(16))
    batch = [
        "on_train_batch_start", "training_step", "on_before_backward", "on_after_backward",
        "on_before_optimizer_step", "on_before_zero_grad", "on_train_batch_end",
    ]  # fmt: skip
    sanity = ["on_validation_epoch_start", "validation_step", "on_validation_epoch_end"]  # one batch of 16
    expected = [
        "setup", "configure_model", "configure_optimizers", "on_fit_start", *sanity, "on_train_start",
        "on_train_epoch_start", *batch, *batch,
        "on_validation_epoch_start", "validation_step", "on_validation_epoch_end",
        "on_train_epoch_end", "on_train_end", "on_fit_end", "teardown",
    ]  # fmt: skip
    assert [call for call in model.calls if not call.startswith("__")] == expected


def test_configure_model_runs_under_the_init_context_before_configure_optimizers() -> None:
    class Lazy(Regressor):
        def __init__(self) -> None:
            prec.TrainingModule.__init__(self)
            self.seen = {}

        def configure_model(self) -> None:
            if hasattr(self, "layer"):
                return
            self.layer = torch.nn.Linear(8, 1)

    model = Lazy()
    trainer = prec.Trainer(accelerator="cpu", precision="bf16-true", max_steps=2, enable_progress_bar=False)
    trainer.fit(model, make_loader())
    assert model.layer.weight.dtype == torch.bfloat16 and trainer.global_step == 2


def test_module_knows_its_trainer_and_device() -> None:
    model = Regressor()
    with pytest.raises(RuntimeError, match="not attached"):
        _ = model.trainer
    assert model.device == torch.device("cpu")
    trainer = prec.Trainer(accelerator="cpu", max_steps=1, enable_progress_bar=False)
    trainer.fit(model, make_loader())
    assert model.trainer is trainer and model.device == torch.device("cpu")
    assert "_prec_trainer" not in model._modules and "_prec_trainer" not in dict(model.named_parameters())


def test_training_step_returning_none_skips_the_optimizer_and_warns_once() -> None:
    class Skipper(Regressor):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
            loss = super().training_step(batch, batch_idx)
            return None if batch_idx % 2 == 0 else loss

    model = Skipper()
    before = model.layer.weight.detach().clone()
    trainer = prec.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=1, enable_progress_bar=False)
    with pytest.warns(prec.PrecWarning, match="returned None") as record:
        trainer.fit(model, make_loader())
    assert torch.equal(before, model.layer.weight)
    assert len([warning for warning in record if "returned None" in str(warning.message)]) == 1


def test_max_steps_stops_mid_epoch() -> None:
    trainer = prec.Trainer(accelerator="cpu", max_steps=5, enable_progress_bar=False)
    trainer.fit(Regressor(), make_loader())
    assert trainer.global_step == 5 and trainer.current_epoch == 1


def test_fit_needs_a_training_module_and_data() -> None:
    trainer = prec.Trainer(accelerator="cpu", enable_progress_bar=False)
    with pytest.raises(prec.ConfigurationError, match="TrainingModule"):
        trainer.fit(torch.nn.Linear(1, 1), make_loader())  # type: ignore[arg-type]
    with pytest.raises(prec.ConfigurationError, match="train_dataloaders"):
        trainer.fit(Regressor())


def test_batches_that_return_none_are_not_optimizer_steps() -> None:
    class NoneOnOdd(Regressor):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
            loss = super().training_step(batch, batch_idx)
            return None if batch_idx % 2 else loss

    trainer = prec.Trainer(accelerator="cpu", max_epochs=1, enable_progress_bar=False, logger=False)
    with pytest.warns(prec.PrecWarning, match="returned None"):
        trainer.fit(NoneOnOdd(), make_loader())  # 4 batches, 2 of them return None
    assert trainer.global_step == 2


def test_float64_metrics_keep_their_digits() -> None:
    class Logs64(Regressor):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.log("precise", torch.tensor(1.0 + 1e-12, dtype=torch.float64))
            self.log("half", torch.tensor(0.5, dtype=torch.bfloat16))
            return super().training_step(batch, batch_idx)

    trainer = prec.Trainer(accelerator="cpu", max_steps=1, enable_progress_bar=False, logger=False)
    trainer.fit(Logs64(), make_loader())
    assert trainer.callback_metrics["precise"].dtype == torch.float64
    assert trainer.callback_metrics["precise"].item() == 1.0 + 1e-12
    assert trainer.callback_metrics["half"].dtype == torch.float32
