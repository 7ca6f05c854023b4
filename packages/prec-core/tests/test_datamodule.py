"""prec.DataModule and the loader resolver a Trainer uses: Lightning's hook order, precedence, early errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import prec
from prec.model.datamodule import StageData


def _dataset(n: int = 32) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=generator)
    return TensorDataset(x, x.sum(dim=1, keepdim=True))


class Regressor(prec.TrainingModule):
    def __init__(self, calls: list[str] | None = None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.calls = calls if calls is not None else []

    def prepare_data(self) -> None:
        self.calls.append("module.prepare_data")

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class RecordingData(prec.DataModule):
    def __init__(self, calls: list[str], batch_size: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters(ignore="calls")
        self.calls = calls

    def prepare_data(self) -> None:
        self.calls.append("dm.prepare_data")

    def setup(self, stage: str) -> None:
        self.calls.append(f"dm.setup:{stage}")
        self.train_set, self.val_set = _dataset(32), _dataset(16)

    def teardown(self, stage: str) -> None:
        self.calls.append(f"dm.teardown:{stage}")

    def train_dataloader(self) -> DataLoader[Any]:
        self.calls.append("dm.train_dataloader")
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size)

    def val_dataloader(self) -> DataLoader[Any]:
        self.calls.append("dm.val_dataloader")
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size)


def test_hooks_run_in_lightnings_order_and_feed_a_real_fit() -> None:
    calls: list[str] = []
    model, data = Regressor(calls), RecordingData(calls)
    stage = StageData("fit", model, data)
    stage.prepare()
    train, val = stage.loaders()
    assert calls == [
        "dm.prepare_data",
        "module.prepare_data",
        "dm.setup:fit",
        "dm.train_dataloader",
        "dm.val_dataloader",
    ]
    before = model.layer.weight.detach().clone()
    trainer = prec.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False)
    trainer.fit(model, train, val)
    stage.teardown()
    assert calls[-1] == "dm.teardown:fit"
    assert trainer.global_step == 8  # 2 epochs x 32 samples / batch 8
    assert "val_loss" in trainer.callback_metrics
    assert not torch.equal(before, model.layer.weight)


def test_explicit_loaders_win_then_datamodule_then_the_modules_own_methods() -> None:
    explicit = DataLoader(_dataset(8), batch_size=4)
    assert prec.resolve_dataloaders("validate", Regressor(), None, explicit) == (explicit,)

    calls: list[str] = []
    train, val = prec.resolve_dataloaders("fit", Regressor(), RecordingData(calls))
    assert isinstance(train, DataLoader) and isinstance(val, DataLoader)

    class OwnData(Regressor):
        def train_dataloader(self) -> DataLoader[Any]:
            return DataLoader(_dataset(8), batch_size=2)

    train, val = prec.resolve_dataloaders("fit", OwnData())
    assert len(train) == 4 and val is None  # no val_dataloader anywhere: fit without validation
    trainer = prec.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False)
    trainer.fit(OwnData(), train)
    assert trainer.global_step == 4


def test_a_datamodule_in_the_loader_position_is_taken_as_the_datamodule() -> None:
    calls: list[str] = []
    train, _ = prec.resolve_dataloaders("fit", Regressor(), RecordingData(calls))
    again, _ = prec.resolve_dataloaders("fit", Regressor(), None, RecordingData(calls))
    assert len(train) == len(again) == 4


def test_the_modules_method_is_ignored_with_a_warning_when_a_datamodule_is_given() -> None:
    class OwnVal(Regressor):
        def val_dataloader(self) -> DataLoader[Any]:
            return DataLoader(_dataset(8))

    class TrainOnly(prec.DataModule):
        def train_dataloader(self) -> DataLoader[Any]:
            return DataLoader(_dataset(8), batch_size=4)

    with pytest.warns(prec.PrecWarning, match=r"OwnVal.val_dataloader\(\) is ignored"):
        _, val = prec.resolve_dataloaders("fit", OwnVal(), TrainOnly())
    assert val is None


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((None, _dataset()), r"fit\(train_dataloaders=...\) got a TensorDataset; pass a DataLoader"),
        ((None, 3), r"fit\(train_dataloaders=...\) got int, which is not an iterable"),
        ((None, DataLoader(_dataset()), "abc"), r"fit\(val_dataloaders=...\) got a str"),
        ((object(),), r"fit\(datamodule=...\) takes a prec.DataModule, got object"),
    ],
)
def test_wrong_objects_fail_at_the_call_naming_the_argument(arguments: tuple[Any, ...], message: str) -> None:
    with pytest.raises(prec.ConfigurationError, match=message):
        StageData("fit", Regressor(), *arguments)


def test_a_foreign_data_module_gets_a_hint_not_not_iterable() -> None:
    class LightningStyle:  # e.g. a lightning.LightningDataModule: has the methods, is not a prec.DataModule
        def train_dataloader(self) -> DataLoader[Any]:
            return DataLoader(_dataset())

    with pytest.raises(prec.ConfigurationError, match="looks like a data module: subclass prec.DataModule"):
        StageData("fit", Regressor(), None, LightningStyle())
    with pytest.raises(prec.ConfigurationError, match="looks like a data module"):
        StageData("fit", Regressor(), LightningStyle())


def test_no_data_and_double_data_fail_at_the_call() -> None:
    with pytest.raises(prec.ConfigurationError, match=r"fit\(\) has no data: pass train_dataloaders="):
        StageData("fit", Regressor())
    with pytest.raises(prec.ConfigurationError, match="both datamodule= and train_dataloaders="):
        StageData("fit", Regressor(), RecordingData([]), DataLoader(_dataset()))
    with pytest.raises(prec.ConfigurationError, match="a DataModule as dataloaders= and as datamodule="):
        StageData("test", Regressor(), RecordingData([]), RecordingData([]))
    with pytest.raises(prec.ConfigurationError, match=r"test\(\) needs test_dataloader\(\)"):
        prec.resolve_dataloaders("test", Regressor(), RecordingData([]))
    with pytest.raises(prec.ConfigurationError, match="stage='train' must be one of"):
        StageData("train", Regressor(), RecordingData([]))


def test_a_bad_loader_from_a_method_is_named_by_the_method() -> None:
    class Bad(prec.DataModule):
        def train_dataloader(self) -> Any:
            return _dataset()

    with pytest.raises(prec.ConfigurationError, match=r"Bad.train_dataloader\(\) got a TensorDataset"):
        prec.resolve_dataloaders("fit", Regressor(), Bad())


def test_several_loaders_are_refused_and_a_list_of_one_is_unwrapped() -> None:
    one = DataLoader(_dataset(8), batch_size=4)
    assert prec.resolve_dataloaders("validate", Regressor(), None, [one]) == (one,)
    with pytest.raises(prec.ConfigurationError, match="gave 2 DataLoaders; prec runs one loader per stage"):
        prec.resolve_dataloaders("validate", Regressor(), None, [one, one])


def test_prepare_data_runs_once_per_node_or_once_in_all() -> None:
    calls: list[str] = []
    data = RecordingData(calls)
    StageData("fit", Regressor(calls), data).prepare(local_rank=1, global_rank=1)
    assert calls == ["dm.setup:fit"]  # not local rank zero: no prepare_data, but setup everywhere
    calls.clear()
    data.prepare_data_per_node = False
    barriers: list[str] = []
    StageData("fit", Regressor(calls), data).prepare(local_rank=0, global_rank=2, barrier=barriers.append)
    assert calls == ["module.prepare_data", "dm.setup:fit"] and barriers == ["prepare_data"]


def test_from_datasets_and_hparams_on_a_datamodule() -> None:
    data = prec.DataModule.from_datasets(_dataset(16), _dataset(8), batch_size=4)
    train, val = prec.resolve_dataloaders("fit", Regressor(), data)
    assert len(train) == 4 and len(val) == 2
    with pytest.raises(prec.ConfigurationError, match=r"implements no test_dataloader\(\)|needs test_dataloader"):
        prec.resolve_dataloaders("test", Regressor(), data)
    assert dict(RecordingData([], batch_size=2).hparams) == {"batch_size": 2}
