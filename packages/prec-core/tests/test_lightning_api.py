"""The Lightning API ported code uses daily, through real fits: data modules, the sanity check, fast_dev_run,
minimum epochs, checkpoint shortcuts, evaluation without the model, torch.compile, and the hooks prec calls (or
refuses)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import prec


def dataset(count: int = 32) -> TensorDataset:
    x = torch.randn(count, 4, generator=torch.Generator().manual_seed(0))
    return TensorDataset(x, x.sum(1, keepdim=True))


class Net(prec.TrainingModule):
    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(4, 1)
        self.calls: list[str] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self(x), y))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class Data(prec.DataModule):
    def __init__(self) -> None:
        super().__init__()
        self.stages: list[str] = []

    def setup(self, stage: str) -> None:
        self.stages.append(stage)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(dataset(), batch_size=8)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(dataset(16), batch_size=8)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(dataset(16), batch_size=8)


def trainer(**options: Any) -> prec.Trainer:
    options = {"accelerator": "cpu", "logger": False, "enable_progress_bar": False, "max_epochs": 2, **options}
    return prec.Trainer(**options)


def test_fit_and_test_with_a_datamodule_and_the_best_checkpoint() -> None:
    data, model = Data(), Net()
    run = trainer(callbacks=[prec.ModelCheckpoint(monitor="val_loss")])
    run.fit(model, datamodule=data)
    assert run.global_step == 8 and data.stages == ["fit"]
    (results,) = run.test(ckpt_path="best", datamodule=data)  # no model passed: the Trainer's own
    assert set(results) == {"val_loss"} and data.stages == ["fit", "test"]
    assert run.estimated_stepping_batches == 8


def test_the_modules_own_dataloader_methods_and_a_wrong_object() -> None:
    class Own(Net):
        def train_dataloader(self) -> DataLoader:
            return DataLoader(dataset(), batch_size=8)

    run = trainer(max_epochs=1)
    run.fit(Own())
    assert run.global_step == 4
    with pytest.raises(prec.ConfigurationError, match="train_dataloaders"):
        trainer().fit(Net(), train_dataloaders=5)  # type: ignore[arg-type]


def test_the_sanity_check_finds_a_broken_validation_step_before_training() -> None:
    class Broken(Net):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            raise RuntimeError("broken validation_step")

        def on_train_start(self) -> None:
            self.calls.append("on_train_start")

    model = Broken()
    with pytest.raises(RuntimeError, match="broken validation_step"):
        trainer().fit(model, DataLoader(dataset(), batch_size=8), DataLoader(dataset(16), batch_size=8))
    assert model.calls == []  # failed before any training


def test_fast_dev_run_runs_one_batch_of_each_stage_and_writes_nothing(tmp_path: Any) -> None:
    run = prec.Trainer(accelerator="cpu", fast_dev_run=True, enable_progress_bar=False, default_root_dir=tmp_path)
    run.fit(Net(), DataLoader(dataset(), batch_size=8), DataLoader(dataset(16), batch_size=8))
    assert run.global_step == 1 and run.current_epoch == 1
    assert list(tmp_path.iterdir()) == []


def test_min_epochs_outlasts_early_stopping() -> None:
    class StopAtOnce(prec.Callback):
        def on_train_epoch_end(self, trainer: prec.Trainer, module: prec.TrainingModule) -> None:
            trainer.should_stop = True

    run = trainer(max_epochs=5, min_epochs=3, callbacks=[StopAtOnce()])
    run.fit(Net(), DataLoader(dataset(), batch_size=8))
    assert run.current_epoch == 3


def test_resume_from_the_last_checkpoint(tmp_path: Any) -> None:
    run = trainer(default_root_dir=tmp_path)
    run.fit(Net(), DataLoader(dataset(), batch_size=8))
    run.max_epochs = 3
    run.fit(Net(), DataLoader(dataset(), batch_size=8), ckpt_path="last")
    assert run.global_step == 12
    with pytest.raises(prec.ConfigurationError, match="found no checkpoint"):
        trainer(enable_checkpointing=False).fit(Net(), DataLoader(dataset(), batch_size=8), ckpt_path="best")


def test_a_compiled_module_trains_and_checkpoints_without_the_prefix(tmp_path: Any) -> None:
    model = Net()
    compiled = torch.compile(model, backend="eager")
    run = trainer(max_epochs=1, default_root_dir=tmp_path)
    run.fit(compiled, DataLoader(dataset(), batch_size=8))
    run.save_checkpoint(tmp_path / "c.ckpt")
    saved = torch.load(tmp_path / "c.ckpt", weights_only=True)["state_dict"]
    assert sorted(saved) == ["layer.bias", "layer.weight"]
    assert Net.load_from_checkpoint(tmp_path / "c.ckpt").hparams.lr == 0.05


def test_optimizer_and_scheduler_hooks_are_called_in_lightnings_order() -> None:
    class Hooked(Net):
        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
            return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1)}

        def on_before_optimizer_step(self, optimizer: Any) -> None:
            self.calls.append("on_before_optimizer_step")

        def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: Any = None, algorithm: Any = None):
            self.calls.append("configure_gradient_clipping")

        def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
            self.calls.append("optimizer_step")
            optimizer.step(closure=optimizer_closure)

        def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
            self.calls.append("optimizer_zero_grad")
            optimizer.zero_grad()

        def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
            self.calls.append("lr_scheduler_step")
            scheduler.step()

        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            self.calls.append("on_train_batch_end")

    model = Hooked()
    trainer(max_epochs=1, limit_train_batches=2).fit(model, DataLoader(dataset(), batch_size=8))
    step = ["on_before_optimizer_step", "configure_gradient_clipping", "optimizer_step", "optimizer_zero_grad"]
    # the epoch scheduler steps with the last batch, before its on_train_batch_end (Lightning's order)
    assert model.calls == [*step, "on_train_batch_end", *step, "lr_scheduler_step", "on_train_batch_end"]


def test_batch_transfer_hooks_and_a_step_without_batch_idx() -> None:
    class Transfers(Net):
        def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
            self.calls.append("before")
            return batch

        def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
            self.calls.append("after")
            return [batch[0] * 0 + 1, batch[1]]

        def training_step(self, batch: Any) -> torch.Tensor:  # type: ignore[override]
            assert torch.equal(batch[0], torch.ones_like(batch[0]))
            return super().training_step(batch, 0)

    model = Transfers()
    trainer(max_epochs=1, limit_train_batches=2).fit(model, DataLoader(dataset(), batch_size=8))
    assert model.calls == ["before", "after", "before", "after"]


def test_a_hook_prec_does_not_call_is_refused_by_name() -> None:
    class Lightningish(Net):
        def on_validation_model_eval(self) -> None: ...

    with pytest.raises(prec.ConfigurationError, match=r"Lightningish\.on_validation_model_eval"):
        trainer().fit(Lightningish(), DataLoader(dataset(), batch_size=8))


def test_log_every_n_steps_writes_every_nth_step(tmp_path: Any) -> None:
    class Logged(Net):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            self.log("loss", loss)
            return loss

    logger = prec.CSVLogger(tmp_path)
    prec.Trainer(accelerator="cpu", max_epochs=2, logger=logger, log_every_n_steps=3, enable_progress_bar=False).fit(
        Logged(), DataLoader(dataset(), batch_size=8)
    )
    import csv

    with logger.metrics_file.open() as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle) if row.get("loss")]
    assert steps == [2, 5]


def test_the_module_knows_its_epoch_step_loggers_and_dtype(tmp_path: Any) -> None:
    seen: list[tuple[int, int, int, torch.dtype]] = []

    class Looking(Net):
        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            seen.append((self.current_epoch, self.global_step, len(self.loggers), self.dtype))

    model = Looking()
    assert (model.current_epoch, model.global_step, model.loggers, model.dtype) == (0, 0, [], torch.float32)
    run = prec.Trainer(
        accelerator="cpu", precision="bf16-true", max_epochs=2, limit_train_batches=1, enable_progress_bar=False,
        logger=prec.CSVLogger(tmp_path),
    )  # fmt: skip
    run.fit(model, DataLoader(dataset(), batch_size=8))
    assert seen == [(0, 1, 1, torch.bfloat16), (1, 2, 1, torch.bfloat16)]
    assert model.logger is run.logger


def test_checkpoints_ranked_by_step_and_the_kth_best() -> None:
    keeper = prec.ModelCheckpoint(monitor="step", mode="max", save_top_k=2)
    run = trainer(max_epochs=3, callbacks=[keeper])
    run.fit(Net(), DataLoader(dataset(), batch_size=8))
    assert keeper.best_model_path.endswith("epoch=2-step=12.ckpt")
    assert keeper.kth_best_model_path.endswith("epoch=1-step=8.ckpt")


def test_trainer_deterministic_sets_torch_for_the_run_and_restores_it() -> None:
    seen: list[bool] = []

    class Looking(Net):
        def on_train_start(self) -> None:
            seen.append(torch.are_deterministic_algorithms_enabled())

    before = torch.are_deterministic_algorithms_enabled()
    trainer(max_epochs=1, deterministic=True).fit(Looking(), DataLoader(dataset(), batch_size=8))
    assert seen == [True] and torch.are_deterministic_algorithms_enabled() == before
