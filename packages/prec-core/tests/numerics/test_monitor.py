"""NumericsMonitor through the Trainer: cadence, no hooks between recorded steps, loggers, the end table, errors."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import pytest
from _modules import load_module

import prec

models = load_module(Path(__file__).with_name("models.py"), "_prec_numerics_models")


Net = models.TrainedWithNorms


class HookProbe(prec.Callback):
    """Whether any forward hook is installed on the model when the optimizer is about to step."""

    def __init__(self) -> None:
        self.hooked: list[bool] = []

    def on_before_optimizer_step(self, trainer: Any, module: Any, optimizer: Any) -> None:
        self.hooked.append(any(m._forward_hooks for m in module.modules()))


def _batches(count: int) -> list[Any]:
    return [models.batch(16, 4, size=16, seed=seed) for seed in range(count)]


def test_records_every_n_steps_and_leaves_no_hook_installed_on_the_other_steps() -> None:
    monitor, probe = prec.NumericsMonitor(every_n_steps=3), HookProbe()
    trainer = prec.Trainer(accelerator="cpu", max_steps=7, callbacks=[monitor, probe], enable_progress_bar=False,
                           enable_model_summary=False, enable_checkpointing=False, logger=False)  # fmt: skip
    trainer.fit(Net(), _batches(7))
    assert monitor.recorded_steps == [2, 5]
    assert probe.hooked == [False, False, True, False, False, True, False]
    assert not monitor.recorder.active  # type: ignore[union-attr]
    assert "numerics/net.norm/activations/amax" in trainer.callback_metrics


def test_default_cadence_is_log_every_n_steps_and_values_reach_the_csv_logger(tmp_path: Path) -> None:
    monitor = prec.NumericsMonitor()
    logger = prec.CSVLogger(tmp_path)
    trainer = prec.Trainer(
        accelerator="cpu",
        max_steps=4,
        log_every_n_steps=2,
        callbacks=[monitor],
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(Net(), _batches(4))
    assert monitor.recorded_steps == [1, 3]
    with open(logger.metrics_file, newline="") as handle:
        rows = list(csv.DictReader(handle))
    logged = [row for row in rows if row.get("numerics/net.inp/weights/amax")]
    assert [int(row["step"]) for row in logged] == [1, 3]


def test_the_end_of_fit_table_fits_80_columns_and_goes_to_the_prec_logger(caplog: pytest.LogCaptureFixture) -> None:
    monitor = prec.NumericsMonitor(every_n_steps=1, formats=["e4m3"])
    trainer = prec.Trainer(
        accelerator="cpu",
        precision="bf16-true",
        max_steps=2,
        callbacks=[monitor],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    with caplog.at_level(logging.INFO, logger="prec"):
        trainer.fit(Net(), _batches(2))
    (report,) = [record.getMessage() for record in caplog.records if "prec numerics" in record.getMessage()]
    assert "lost_update" in report
    assert max(len(line) for line in report.splitlines()) <= 80


def test_histograms_reach_tensorboard(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = prec.TensorBoardLogger(tmp_path)
    trainer = prec.Trainer(
        accelerator="cpu",
        max_steps=1,
        callbacks=[prec.NumericsMonitor(every_n_steps=1)],
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(Net(), _batches(1))
    events = EventAccumulator(str(logger.log_dir), size_guidance={"histograms": 0})
    events.Reload()
    assert "numerics/net.norm/activations/log2_magnitude" in events.Tags()["histograms"]


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"every_n_steps": 0}, "every_n_steps"),
        ({"formats": ["fp12"]}, "fp12"),
        ({"kinds": ["activation"]}, "kinds"),
        ({"module_filter": "Linear"}, "module_filter"),
        ({"top": -1}, "top"),
    ],
)
def test_bad_arguments_are_configuration_errors_naming_them(arguments: dict[str, Any], named: str) -> None:
    with pytest.raises(prec.ConfigurationError, match=named):
        prec.NumericsMonitor(**arguments)


def test_a_filter_that_selects_nothing_is_refused_at_fit_start() -> None:
    monitor = prec.NumericsMonitor(module_filter=lambda name, module: False)
    trainer = prec.Trainer(
        accelerator="cpu",
        max_steps=1,
        callbacks=[monitor],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    with pytest.raises(prec.ConfigurationError, match="selected no module"):
        trainer.fit(Net(), _batches(1))
