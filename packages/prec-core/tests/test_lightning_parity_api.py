"""Lightning's daily API that ported files use: each item checked against prec, and against Lightning where the
value is Lightning's to define."""

from __future__ import annotations

import contextlib
import fnmatch
import io
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import prec

lightning = pytest.importorskip("lightning.pytorch")

QUIET = {"logger": False, "enable_progress_bar": False, "enable_checkpointing": False, "enable_model_summary": False}


def _loader(n: int = 16, batch_size: int = 4) -> DataLoader[Any]:
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=batch_size)


class Regressor(prec.TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y), on_step=True, on_epoch=True)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)


def _fit(model: prec.TrainingModule, **kwargs: Any) -> prec.Trainer:
    trainer = prec.Trainer(accelerator="cpu", **{**QUIET, "max_epochs": 1, **kwargs})
    trainer.fit(model, _loader(), _loader())
    return trainer


@pytest.mark.parametrize(
    "reduce_fx", ["max", "MAX", torch.max, max, "avg", "Mean", torch.mean, "sum", sum, torch.min, min]
)
def test_reduce_fx_takes_lightnings_callables_and_aliases(reduce_fx: Any) -> None:
    values = [1.0, 4.0, 2.0, 3.0]
    expected = {"max": 4.0, "mean": 2.5, "avg": 2.5, "sum": 10.0, "min": 1.0}
    name = reduce_fx.lower() if isinstance(reduce_fx, str) else reduce_fx.__name__

    class Logs(Regressor):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            self.log("value", values[batch_idx], on_step=False, on_epoch=True, reduce_fx=reduce_fx)
            return super().training_step(batch, batch_idx)

    trainer = _fit(Logs(), limit_val_batches=0)
    assert float(trainer.callback_metrics["value"]) == expected[name]


def test_an_unknown_reduce_fx_is_a_configuration_error_naming_what_is_accepted() -> None:
    class Logs(Regressor):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            self.log("value", 1.0, reduce_fx=torch.median)
            return super().training_step(batch, batch_idx)

    with pytest.raises(prec.ConfigurationError, match="reduce_fx must be one of mean, sum, max, min"):
        _fit(Logs(), limit_val_batches=0)


def test_a_torchmetrics_metric_is_computed_and_reset_at_the_epoch_end() -> None:
    torchmetrics = pytest.importorskip("torchmetrics")

    class WithMetric(Regressor):
        def __init__(self) -> None:
            super().__init__()
            self.error = torchmetrics.MeanAbsoluteError()
            self.computed: list[float] = []

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.error(self.net(x), y)
            self.log("val_mae", self.error)

        def on_validation_epoch_end(self) -> None:
            self.computed.append(float(self.error.compute()))

    model = WithMetric()
    trainer = _fit(model, num_sanity_val_steps=0, max_epochs=2)
    assert float(trainer.callback_metrics["val_mae"]) == pytest.approx(model.computed[-1])
    assert model.error.update_count == 0  # reset after the epoch, as Lightning does


def test_trainer_reports_logged_metrics_status_and_its_progress_bar(tmp_path: Any) -> None:
    class Logs(Regressor):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = super().training_step(batch, batch_idx)
            self.log("train_loss", loss, on_step=True, on_epoch=True)
            return loss

    trainer = prec.Trainer(
        accelerator="cpu", max_epochs=1, log_every_n_steps=1, default_root_dir=tmp_path, enable_checkpointing=False
    )
    assert trainer.state.status == "initializing" and not trainer.state.finished
    assert isinstance(trainer.progress_bar_callback, prec.TQDMProgressBar)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Logs(), _loader(), _loader())
    assert trainer.state.status == "finished" and trainer.state.finished
    assert {"train_loss_step", "train_loss_epoch", "val_loss_epoch"} <= set(trainer.logged_metrics)
    assert "val_loss_step" not in trainer.callback_metrics  # Lightning leaves evaluation step values out
    assert {"val_loss", "val_loss_epoch", "train_loss_step"} <= set(trainer.callback_metrics)
    assert prec.Trainer(accelerator="cpu", **QUIET).progress_bar_callback is None


def test_a_run_that_raised_is_interrupted() -> None:
    class Fails(Regressor):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            raise RuntimeError("boom")

    trainer = prec.Trainer(accelerator="cpu", max_epochs=1, **QUIET)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(Fails(), _loader())
    assert trainer.state.status == "interrupted" and not trainer.state.finished


def test_hooks_set_to_none_are_not_overridden_and_hooks_patched_on_the_instance_are_called() -> None:
    model = Regressor()
    ends: list[int] = []
    model.validation_step = None  # type: ignore[assignment,method-assign]
    model.on_train_epoch_end = lambda: ends.append(model.current_epoch)  # type: ignore[method-assign]
    trainer = _fit(model, max_epochs=2)
    assert ends == [0, 1]
    assert "val_loss" not in trainer.callback_metrics and trainer.num_val_batches is None


def test_on_train_batch_end_receives_lightnings_outputs() -> None:
    """``{"loss": detached loss}`` for a tensor, the other keys too for a dict, ``{}`` for a skipped batch."""
    seen: list[Any] = []

    class Returns(Regressor):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = super().training_step(batch, batch_idx)
            return [loss, {"loss": loss, "extra": 7}, None, loss][batch_idx]

        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            seen.append(outputs)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _fit(Returns(), limit_val_batches=0)
    assert [sorted(item) for item in seen] == [["loss"], ["extra", "loss"], [], ["loss"]]
    assert not seen[0]["loss"].requires_grad and seen[1]["extra"] == 7


def test_validate_and_test_with_verbose_false_print_no_table(capsys: pytest.CaptureFixture[str]) -> None:
    model = Regressor()
    model.test_step = model.validation_step  # type: ignore[method-assign]
    trainer = prec.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_model_summary=False)
    trainer.validate(model, _loader(), verbose=False)
    trainer.test(model, _loader(), verbose=False)
    assert "val_loss" not in capsys.readouterr().out
    trainer.validate(model, _loader())
    assert "val_loss" in capsys.readouterr().out


def test_learning_rate_monitor_values_are_monitorable(tmp_path: Any) -> None:
    monitor = prec.LearningRateMonitor(log_momentum=True, log_weight_decay=True)
    trainer = prec.Trainer(
        accelerator="cpu", max_epochs=1, callbacks=[monitor], default_root_dir=tmp_path, **{**QUIET, "logger": True}
    )
    trainer.fit(Regressor(), _loader(), _loader())
    assert float(trainer.callback_metrics["lr-SGD"]) == pytest.approx(0.05)
    assert monitor.last_momentum_values == {"lr-SGD-momentum": 0.9}
    assert monitor.last_weight_decay_values == {"lr-SGD-weight_decay": 0.01}


def test_early_stopping_on_train_epoch_end_sees_what_the_module_logged_there() -> None:
    class LogsAtEpochEnd(Regressor):
        def on_train_epoch_end(self) -> None:
            self.log("plateau", 1.0)

    stopper = prec.EarlyStopping(monitor="plateau", patience=1, check_on_train_epoch_end=True)
    trainer = _fit(LogsAtEpochEnd(), max_epochs=10, callbacks=[stopper], limit_val_batches=0)
    assert trainer.current_epoch == 2  # the first check sets the best, the second finds no improvement


def test_a_checkpoint_keeps_lightnings_top_level_counters(tmp_path: Any) -> None:
    trainer = _fit(Regressor(), max_epochs=2)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    checkpoint = torch.load(tmp_path / "run.ckpt", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (2, 8)


def _lightning_global_step(automatic: bool) -> int:
    """Lightning's global_step after one epoch of 2 batches with 2 optimizers."""

    class TwoOptimizers(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = automatic
            self.a, self.b = torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = (self.a(batch[0]) + self.b(batch[0])).pow(2).mean()
            if automatic:
                return loss
            for optimizer in self.optimizers():
                optimizer.zero_grad()
            self.manual_backward(loss)
            for optimizer in self.optimizers():
                optimizer.step()
            return None

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.a.parameters(), lr=0.1), torch.optim.SGD(self.b.parameters(), lr=0.1)

    trainer = lightning.Trainer(accelerator="cpu", max_epochs=1, **QUIET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(TwoOptimizers(), DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4))
    return int(trainer.global_step)


def test_manual_optimization_global_step_counts_optimizer_steps_as_lightning() -> None:
    class TwoOptimizers(prec.TrainingModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.a, self.b = torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> None:
            loss = (self.a(batch[0]) + self.b(batch[0])).pow(2).mean()
            for optimizer in self.optimizers():
                optimizer.zero_grad()
            self.manual_backward(loss)
            for optimizer in self.optimizers():
                optimizer.step()

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.a.parameters(), lr=0.1), torch.optim.SGD(self.b.parameters(), lr=0.1)

    trainer = prec.Trainer(accelerator="cpu", max_epochs=1, **QUIET)
    trainer.fit(TwoOptimizers(), DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4))
    assert trainer.global_step == _lightning_global_step(automatic=False) == 4


def test_checkpoints_go_under_each_runs_own_version_folder(tmp_path: Any) -> None:
    """Two runs in one root never mix their checkpoints: each writes under its logger's version folder."""
    folders = []
    for _ in range(2):
        trainer = prec.Trainer(
            accelerator="cpu", max_epochs=1, default_root_dir=tmp_path, enable_progress_bar=False, log_every_n_steps=1
        )
        trainer.fit(Regressor(), _loader(), _loader())
        checkpoint = next(c for c in trainer.callbacks if isinstance(c, prec.ModelCheckpoint))
        folders.append(checkpoint.dirpath)
        assert checkpoint.dirpath == trainer.logger.log_dir / "checkpoints"
        assert [path.name for path in checkpoint.dirpath.iterdir()] == ["epoch=0-step=4.ckpt"]
    assert folders[0] != folders[1]


def test_a_run_shorter_than_log_every_n_steps_says_it_logs_no_steps(tmp_path: Any) -> None:
    trainer = prec.Trainer(
        accelerator="cpu", max_epochs=1, default_root_dir=tmp_path, enable_progress_bar=False, log_every_n_steps=50
    )
    with pytest.warns(prec.PrecWarning, match="fewer than Trainer\\(log_every_n_steps=50\\)"):
        trainer.fit(Regressor(), _loader(), _loader())


# -- the porting guide against Lightning 2.6.6 ------------------------------------------------------------------
PORTING = Path(__file__).resolve().parents[3] / "docs" / "porting.md"


def _named_in_the_guide(text: str, name: str, prefix: str = "") -> bool:
    """``name`` appears in porting.md as `prefix+name` (optionally with a call), or under one of its patterns
    (`on_*_model_eval`, `CHECKPOINT_HYPER_PARAMS_*`, `trainer.fit_loop` and the other loop objects)."""
    shown = set(re.findall(r"`([\w.*]+)(?:\([^`]*\))?`", text))
    return any(fnmatch.fnmatchcase(prefix + name, pattern) for pattern in shown) or (
        name.endswith("_loop") and f"`{prefix}fit_loop` and the other loop objects" in text
    )


def test_the_porting_guide_names_every_lightning_trainer_member_prec_leaves_out() -> None:
    text = PORTING.read_text(encoding="utf-8")
    trainer = prec.Trainer(accelerator="cpu", **QUIET)
    public = [name for name in dir(lightning.Trainer) if not name.startswith("_")]
    has = set(dir(trainer))  # not hasattr: a property such as estimated_stepping_batches raises before fit
    unnamed = [name for name in public if name not in has and not _named_in_the_guide(text, name, "trainer.")]
    assert unnamed == []
    named = set(re.findall(r"`trainer\.(\w+)`", text.split("## What prec does not have")[1].split("\n## ")[0]))
    read_instead = {"current_epoch", "global_step", "state", "num_val_batches", "model", "devices", "strategy"}
    read_instead |= {"callbacks", "should_stop", "is_global_zero"}
    assert sorted(named & has - read_instead) == [], "the guide lists as missing what prec has"


def test_the_porting_guide_names_every_lightning_module_member_and_callback_prec_leaves_out() -> None:
    text = PORTING.read_text(encoding="utf-8")
    loader_hooks = {"prepare_data", "train_dataloader", "val_dataloader", "test_dataloader", "predict_dataloader"}
    own = set(dir(torch.nn.Module)) | loader_hooks  # prec calls the loader hooks a module defines
    module = [name for name in dir(lightning.LightningModule) if not name.startswith("_") and name not in own]
    unnamed = [
        name
        for name in module
        if not hasattr(prec.TrainingModule, name)
        and not _named_in_the_guide(text, name, "self.")
        and not _named_in_the_guide(text, name)
    ]
    assert unnamed == []
    data = [name for name in dir(lightning.LightningDataModule) if not name.startswith("_")]
    assert [name for name in data if not hasattr(prec.DataModule, name) and not _named_in_the_guide(text, name)] == []
    callbacks = [name for name in dir(lightning.callbacks) if name[0].isupper()]
    assert [name for name in callbacks if not hasattr(prec, name) and f"`{name}`" not in text] == []


def test_the_keep_lightning_example_of_the_porting_guide_runs() -> None:
    """The page check skips the block (the docs environment has no Lightning); it runs here, with Lightning."""
    pytest.importorskip("prec_lightning")
    section = PORTING.read_text(encoding="utf-8").split("## Keep Lightning, gain prec")[1].split("\n## ")[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(code, str(PORTING), "exec"), {"__name__": "porting_keep_lightning"})  # noqa: S102
    assert printed.getvalue().strip().endswith("bf16-true")
