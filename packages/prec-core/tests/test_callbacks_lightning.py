"""EarlyStopping, LearningRateMonitor and BaseFinetuning on real fits with today's Trainer."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import prec
from prec.model.callback import CALLBACK_HOOKS, uncalled_overrides


def _loader(n: int = 16, batch_size: int = 4) -> DataLoader[Any]:
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=batch_size)


class Scripted(prec.TrainingModule):
    """Logs ``val_loss`` from a script, one value per validation run, so each stopping rule is exercised."""

    def __init__(self, values: list[float], lr: float = 0.0) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.values = values
        self.lr = lr
        self.validations = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self.values[min(self.validations, len(self.values) - 1)])

    def on_validation_epoch_end(self) -> None:
        self.validations += 1

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def _fit(model: prec.TrainingModule, callbacks: list[prec.Callback], **options: Any) -> prec.Trainer:
    options = {
        "max_epochs": 20,
        "logger": False,
        "enable_progress_bar": False,
        "num_sanity_val_steps": 0,  # the scripted values count validation epochs of the fit itself
        "log_every_n_steps": 1,
        **options,
    }
    trainer = prec.Trainer(accelerator="cpu", callbacks=callbacks, **options)
    trainer.fit(model, _loader(), _loader(8))
    return trainer


# -- EarlyStopping -----------------------------------------------------------------------------------------
def test_early_stopping_stops_a_real_fit_after_patience_checks_without_improvement() -> None:
    stopper = prec.EarlyStopping(monitor="val_loss", patience=2)
    trainer = _fit(Scripted([1.0, 0.5, 0.6, 0.5, 0.4, 0.3]), [stopper])
    # 0.5 is best at epoch 1; epochs 2 and 3 do not beat it: stop after epoch 3.
    assert trainer.current_epoch == 4 and stopper.stopped_epoch == 3
    assert stopper.wait_count == 2 and stopper.best_score.item() == 0.5


def test_min_delta_mode_max_and_thresholds() -> None:
    stopper = prec.EarlyStopping(monitor="val_loss", patience=1, min_delta=0.1)
    _fit(Scripted([1.0, 0.95, 0.5]), [stopper])  # 0.95 is not better by 0.1
    assert stopper.stopped_epoch == 1
    stopper = prec.EarlyStopping(monitor="val_loss", mode="max", patience=1)
    _fit(Scripted([1.0, 2.0, 3.0, 2.5]), [stopper])
    assert stopper.stopped_epoch == 3 and stopper.best_score.item() == 3.0
    stopper = prec.EarlyStopping(monitor="val_loss", stopping_threshold=0.25, patience=100)
    _fit(Scripted([1.0, 0.5, 0.2, 0.1]), [stopper])
    assert stopper.stopped_epoch == 2
    stopper = prec.EarlyStopping(monitor="val_loss", divergence_threshold=5.0, patience=100)
    _fit(Scripted([1.0, 0.5, 6.0, 0.1]), [stopper])
    assert stopper.stopped_epoch == 2
    stopper = prec.EarlyStopping(monitor="val_loss", patience=100)
    _fit(Scripted([1.0, math.nan, 0.1]), [stopper])
    assert stopper.stopped_epoch == 1
    stopper = prec.EarlyStopping(monitor="val_loss", patience=100, check_finite=False)
    trainer = _fit(Scripted([1.0, math.nan, 0.1]), [stopper], max_epochs=3)
    assert trainer.current_epoch == 3 and stopper.best_score.item() == pytest.approx(0.1)


def test_monitoring_a_training_metric_at_epoch_end() -> None:
    stopper = prec.EarlyStopping(monitor="train_loss", patience=1, check_on_train_epoch_end=True)
    trainer = _fit(Scripted([1.0], lr=0.0), [stopper])  # lr=0: the training loss never improves
    assert trainer.current_epoch == 2 and stopper.stopped_epoch == 1


def test_a_missing_metric_raises_when_strict_and_is_skipped_otherwise() -> None:
    with pytest.raises(prec.ConfigurationError, match=r"monitor='val_acc'\) found no such logged metric"):
        _fit(Scripted([1.0]), [prec.EarlyStopping(monitor="val_acc")])
    trainer = _fit(Scripted([1.0]), [prec.EarlyStopping(monitor="val_acc", strict=False)], max_epochs=2)
    assert trainer.current_epoch == 2
    with pytest.raises(prec.ConfigurationError, match="mode='avg'"):
        prec.EarlyStopping(monitor="val_loss", mode="avg")


def test_a_standalone_validate_never_stops_anything() -> None:
    stopper = prec.EarlyStopping(monitor="val_loss", patience=0)
    trainer = prec.Trainer(accelerator="cpu", callbacks=[stopper], logger=False, enable_progress_bar=False)
    trainer.validate(Scripted([1.0]), _loader())
    assert stopper.wait_count == 0 and not trainer.should_stop


def test_early_stopping_state_survives_a_checkpoint_round_trip(tmp_path: Path) -> None:
    stopper = prec.EarlyStopping(monitor="val_loss", patience=3)
    saver = prec.ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    _fit(Scripted([1.0, 0.5, 0.7, 0.8]), [stopper, saver], max_epochs=4)
    assert stopper.wait_count == 2
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)["callbacks"]
    assert saved["EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}"]["wait_count"] == 2

    resumed = prec.EarlyStopping(monitor="val_loss", patience=3)
    model = Scripted([0.9])  # no improvement over the restored best (0.5): one more check stops the run
    trainer = prec.Trainer(
        accelerator="cpu", max_epochs=20, callbacks=[resumed], logger=False, enable_progress_bar=False
    )
    trainer.fit(model, _loader(), _loader(8), ckpt_path=tmp_path / "last.ckpt")
    assert resumed.best_score.item() == 0.5 and resumed.stopped_epoch == 4 and trainer.current_epoch == 5


# -- LearningRateMonitor ------------------------------------------------------------------------------------
class Scheduled(Scripted):
    def __init__(self, interval: str, groups: int = 1) -> None:
        super().__init__([1.0], lr=0.1)
        self.interval, self.groups = interval, groups
        self.extra = torch.nn.Linear(4, 1)

    def configure_optimizers(self) -> Any:
        if self.groups == 1:
            optimizer = torch.optim.SGD(self.layer.parameters(), lr=0.1, momentum=0.9)
        else:
            optimizer = torch.optim.SGD(
                [{"params": self.layer.parameters()}, {"params": self.extra.parameters(), "lr": 0.01}],
                lr=0.1,
                momentum=0.9,
            )
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.interval}}


def _columns(tmp_path: Path) -> dict[str, list[str]]:
    (path,) = tmp_path.glob("**/metrics.csv")
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    return {name: [row[name] for row in rows if row[name]] for name in rows[0]}


def test_learning_rates_are_logged_per_epoch_with_lightnings_names(tmp_path: Path) -> None:
    monitor = prec.LearningRateMonitor(log_momentum=True)
    _fit(Scheduled("epoch"), [monitor], max_epochs=3, logger=prec.CSVLogger(tmp_path))
    assert monitor.lrs["lr-SGD"] == [0.1, 0.05, 0.025]
    columns = _columns(tmp_path)
    assert [float(v) for v in columns["lr-SGD"]] == [0.1, 0.05, 0.025]
    assert [float(v) for v in columns["lr-SGD-momentum"]] == [0.9, 0.9, 0.9]


def test_learning_rates_per_step_and_param_group(tmp_path: Path) -> None:
    monitor = prec.LearningRateMonitor(logging_interval="step")
    _fit(Scheduled("step", groups=2), [monitor], max_epochs=1, logger=prec.CSVLogger(tmp_path))
    assert monitor.lrs["lr-SGD/pg1"] == [0.1, 0.05, 0.025, 0.0125]  # 4 batches, halved after each step
    assert monitor.lrs["lr-SGD/pg2"] == [0.01, 0.005, 0.0025, 0.00125]
    columns = _columns(tmp_path)
    assert [float(v) for v in columns["lr-SGD/pg1"]] == [0.1, 0.05, 0.025, 0.0125]
    assert columns["step"][:4] == ["0", "1", "2", "3"]


def test_an_optimizer_without_scheduler_and_no_logger() -> None:
    monitor = prec.LearningRateMonitor(logging_interval="epoch")
    trainer = prec.Trainer(accelerator="cpu", max_epochs=2, callbacks=[monitor], enable_progress_bar=False)
    trainer.fit(Scripted([1.0], lr=0.3), _loader())
    assert monitor.lrs == {"lr-SGD": [0.3, 0.3]}
    with pytest.raises(prec.ConfigurationError, match="LearningRateMonitor needs a logger"):
        _fit(Scripted([1.0]), [prec.LearningRateMonitor()])
    with pytest.raises(prec.ConfigurationError, match="logging_interval='batch'"):
        prec.LearningRateMonitor(logging_interval="batch")


# -- BaseFinetuning -----------------------------------------------------------------------------------------
class Transfer(prec.TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU())
        self.head = torch.nn.Linear(8, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.head(self.backbone(x)), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(filter(lambda p: p.requires_grad, self.parameters()), lr=0.1)


class UnfreezeAtOne(prec.BaseFinetuning):
    def freeze_before_training(self, module: Any) -> None:
        self.freeze(module.backbone, train_bn=False)

    def finetune_function(self, module: Any, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        if epoch == 1:
            self.unfreeze_and_add_param_group(module.backbone, optimizer, train_bn=True)


class Snapshots(prec.Callback):
    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        self.weights.append(module.backbone[0].weight.detach().clone())


def test_the_backbone_is_frozen_then_unfrozen_into_a_new_param_group(tmp_path: Path) -> None:
    model, snapshots, finetuning = Transfer(), Snapshots(), UnfreezeAtOne()
    start = model.backbone[0].weight.detach().clone()
    saver = prec.ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, filename="{epoch}")
    trainer = prec.Trainer(
        accelerator="cpu",
        max_epochs=3,
        callbacks=[finetuning, snapshots, saver],
        logger=False,
        enable_progress_bar=False,
    )
    trainer.fit(model, _loader())
    assert torch.equal(snapshots.weights[0], start)  # frozen in epoch 0
    assert not torch.equal(snapshots.weights[1], start)  # trained from epoch 1
    (optimizer,) = trainer.optimizers
    assert [group["lr"] for group in optimizer.param_groups] == [0.1, pytest.approx(0.01)]
    assert len(optimizer.param_groups[1]["params"]) == 4  # Linear weight and bias, BatchNorm weight and bias
    groups = finetuning.state_dict()["internal_optimizer_metadata"][0]
    assert groups[1]["params"] == ["backbone.0.weight", "backbone.0.bias", "backbone.1.weight", "backbone.1.bias"]

    # Resume from the end of epoch 0 (before the unfreeze): the backbone is frozen again and unfrozen at epoch 1.
    resumed_model, resumed = Transfer(), UnfreezeAtOne()
    again = prec.Trainer(accelerator="cpu", max_epochs=2, callbacks=[resumed], logger=False, enable_progress_bar=False)
    again.fit(resumed_model, _loader(), ckpt_path=tmp_path / "epoch=0.ckpt")
    assert len(again.optimizers[0].param_groups) == 2 and resumed_model.backbone[0].weight.requires_grad


def test_freeze_helpers_keep_batch_norm_trainable_when_asked() -> None:
    model = Transfer()
    prec.BaseFinetuning.freeze(model.backbone, train_bn=True)
    assert not model.backbone[0].weight.requires_grad and model.backbone[1].weight.requires_grad
    assert len(list(prec.BaseFinetuning.filter_params(model.backbone, requires_grad=False))) == 2
    prec.BaseFinetuning.make_trainable(model.backbone)
    assert all(p.requires_grad for p in model.backbone.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(prec.PrecWarning, match="already in the optimizer"):
        prec.BaseFinetuning.unfreeze_and_add_param_group(model.backbone, optimizer)
    assert len(optimizer.param_groups) == 1


# -- the hook set -------------------------------------------------------------------------------------------
def test_every_lightning_hook_exists_and_uncalled_overrides_are_named() -> None:
    lightning_hooks = {
        "setup", "teardown", "on_fit_start", "on_fit_end", "on_sanity_check_start", "on_sanity_check_end",
        "on_train_batch_start", "on_train_batch_end", "on_train_epoch_start", "on_train_epoch_end",
        "on_validation_epoch_start", "on_validation_epoch_end", "on_test_epoch_start", "on_test_epoch_end",
        "on_predict_epoch_start", "on_predict_epoch_end", "on_validation_batch_start", "on_validation_batch_end",
        "on_test_batch_start", "on_test_batch_end", "on_predict_batch_start", "on_predict_batch_end",
        "on_train_start", "on_train_end", "on_validation_start", "on_validation_end", "on_test_start",
        "on_test_end", "on_predict_start", "on_predict_end", "on_exception", "on_save_checkpoint",
        "on_load_checkpoint", "on_before_backward", "on_after_backward", "on_before_optimizer_step",
        "on_before_zero_grad",
    }  # fmt: skip
    assert lightning_hooks <= set(CALLBACK_HOOKS)
    for name in CALLBACK_HOOKS:
        assert getattr(prec.Callback, name).__doc__, f"Callback.{name} is undocumented"
    bar = prec.TQDMProgressBar()
    assert "on_test_batch_end" in uncalled_overrides(bar, called={"on_train_batch_end"})
    assert uncalled_overrides(bar, called=CALLBACK_HOOKS) == []
    assert prec.EarlyStopping("x").state_key == "EarlyStopping{'monitor': 'x', 'mode': 'min'}"
