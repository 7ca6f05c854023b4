"""self.log -> callback_metrics, the CSV metrics file, the progress bar, and the scaler's own numbers."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
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


class Logged(prec.TrainingModule):
    def __init__(self, inf_at: frozenset[int] = frozenset()) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.inf_at = inf_at
        self.file_seen_during_fit: bool | None = None

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x).float(), y)
        self.log("loss", loss, prog_bar=True)
        self.log("batch", float(batch_idx), on_step=False, on_epoch=True)
        if batch_idx % 2 == 0:
            self.log("even", 1.0, logger=True)
        logger = self.trainer.logger
        if batch_idx == 3 and logger is not None and self.file_seen_during_fit is None:  # first epoch only
            self.file_seen_during_fit = logger.metrics_file.exists()
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(batch[0]).float(), batch[1]))

    def on_after_backward(self) -> None:
        if self.trainer.global_step in self.inf_at:
            self.layer.weight.grad[0, 0] = math.inf

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_log_fills_callback_metrics_with_step_values_and_epoch_means(tmp_path: Path) -> None:
    trainer = prec.Trainer(
        accelerator="cpu", max_epochs=1, enable_progress_bar=False, default_root_dir=tmp_path, log_every_n_steps=1
    )
    trainer.fit(Logged(), make_loader(), make_loader(8))
    metrics = trainer.callback_metrics
    assert set(metrics) == {"loss", "batch", "even", "val_loss"}
    assert float(metrics["batch"]) == pytest.approx(3.5)  # mean of 0..7
    assert set(trainer.progress_bar_metrics) == {"loss"}


def test_csv_file_has_one_row_per_logged_step_written_in_batches(tmp_path: Path) -> None:
    model = Logged()
    trainer = prec.Trainer(
        accelerator="cpu", max_epochs=2, enable_progress_bar=False, default_root_dir=tmp_path, log_every_n_steps=1
    )
    trainer.fit(model, make_loader(), make_loader(8))
    assert model.file_seen_during_fit is False  # nothing written per step: rows are buffered
    path = tmp_path / "prec_logs" / "version_0" / "metrics.csv"
    assert trainer.logger is not None and trainer.logger.metrics_file == path
    rows = read_rows(path)
    assert list(rows[0]) == ["step", "epoch", "batch", "even", "loss", "val_loss"]
    assert [int(r["step"]) for r in rows] == list(range(16))
    assert rows[0]["even"] == "1.0" and rows[1]["even"] == ""
    # the epoch means and the validation result share the row of the epoch's last step
    assert float(rows[7]["batch"]) == pytest.approx(3.5) and rows[7]["val_loss"] != ""
    assert rows[7]["epoch"] == "0" and rows[8]["epoch"] == "1"
    # a second run writes the next version
    prec.Trainer(
        accelerator="cpu", max_steps=1, enable_progress_bar=False, default_root_dir=tmp_path, log_every_n_steps=1
    ).fit(Logged(), make_loader())
    assert (tmp_path / "prec_logs" / "version_1" / "metrics.csv").exists()


def test_csv_logger_flushes_every_n_steps(tmp_path: Path) -> None:
    logger = prec.CSVLogger(tmp_path, name="runs", version="a", flush_every_n_steps=2)
    model = Logged()
    prec.Trainer(accelerator="cpu", max_steps=6, enable_progress_bar=False, logger=logger, log_every_n_steps=1).fit(
        model, make_loader()
    )
    assert model.file_seen_during_fit is True  # written at step 2
    assert len(read_rows(tmp_path / "runs" / "a" / "metrics.csv")) == 6


def test_logger_false_writes_nothing(tmp_path: Path) -> None:
    trainer = prec.Trainer(
        accelerator="cpu", max_steps=2, enable_progress_bar=False, logger=False, default_root_dir=tmp_path
    )
    trainer.fit(Logged(), make_loader())
    assert list(tmp_path.iterdir()) == [] and "loss" in trainer.callback_metrics


def test_only_global_rank_zero_writes(tmp_path: Path) -> None:
    class SecondRank(prec.Strategy):
        """Stands in for rank 1 of a multi-process run; only the rank it reports matters here."""

        @property
        def global_rank(self) -> int:
            return 1

    trainer = prec.Trainer(accelerator="cpu", max_steps=2, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.strategy = SecondRank(trainer.accelerator, trainer.devices, trainer.precision_plugin)
    trainer.fit(Logged(), make_loader())
    assert not (tmp_path / "prec_logs").exists()


def test_scaler_metrics_are_logged_automatically(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    precision = prec.MixedPrecision("16-mixed", "cpu", torch.float16, scaler=True, init_scale=2.0**8)
    trainer = prec.Trainer(accelerator="cpu", max_epochs=1, plugins=[precision], default_root_dir=tmp_path)
    trainer.fit(Logged(inf_at=frozenset({3})), make_loader())
    metrics = trainer.callback_metrics
    assert float(metrics["skipped_steps"]) == 1.0 and float(metrics["loss_scale"]) == 2.0**7
    rows = read_rows(tmp_path / "prec_logs" / "version_0" / "metrics.csv")
    assert float(rows[-1]["loss_scale"]) == 2.0**7 and float(rows[-1]["skipped_steps"]) == 1.0
    bar = capsys.readouterr().err
    assert "loss=" in bar and "loss_scale=128" in bar and "skipped_steps=1" in bar


def test_log_rejects_non_scalars() -> None:
    class Bad(Logged):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.log("vector", torch.ones(3))
            return torch.zeros(())

    with pytest.raises(ValueError, match="needs a scalar"):
        prec.Trainer(accelerator="cpu", max_steps=1, enable_progress_bar=False, logger=False).fit(Bad(), make_loader())


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("rank_zero_only", "pass sync_dist=False"),
        ("sync_dist_group", "torch.distributed.all_reduce"),
        ("enable_graph", "without their autograd graph"),
        ("add_dataloader_idx", "dataloader_idx_N"),
        ("metric_attribute", "drop metric_attribute"),
        ("prog_barr", "unknown argument 'prog_barr'; it takes prog_bar"),
    ],
)
def test_lightning_log_arguments_prec_leaves_out_say_what_to_do(argument: str, message: str) -> None:
    class Logs(prec.TrainingModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = self.layer(batch).pow(2).mean()
            self.log("loss", loss, **{argument: True})
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = prec.Trainer(accelerator="cpu", max_steps=1, enable_progress_bar=False, logger=False,
                           enable_checkpointing=False, enable_model_summary=False)  # fmt: skip
    with pytest.raises(prec.ConfigurationError, match=re.escape(message)):
        trainer.fit(Logs(), [torch.randn(4, 2)])
