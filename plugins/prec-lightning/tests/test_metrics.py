"""Lightning's callbacks and loggers see prec's numbers: the loss scale and the steps skipped for inf/NaN gradients,
through ``LightningModule.log`` (so ``trainer.callback_metrics``, the loggers, the progress bar) and through the
plugin's attributes (``trainer.precision_plugin.skipped_steps``, ``.step_skipped``, ``.loss_scale``)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from _modules import load_module
from lightning.pytorch.loggers import CSVLogger

import prec
import prec_lightning

script = load_module(Path(__file__).with_name("lightning_script.py"), "_prec_lightning_script")


class Recorder(L.Callback):
    """What a callback can read after every batch."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        plugin = trainer.precision_plugin
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
        self.rows.append(
            {
                "metrics": metrics,
                "skipped_steps": plugin.skipped_steps,
                "step_skipped": plugin.step_skipped,
                "loss_scale": plugin.loss_scale,
                "scaler": trainer.scaler,
            }
        )


@pytest.mark.usefixtures("quiet")
def test_a_callback_sees_skipped_steps_and_the_weights_stay_finite() -> None:
    recorder = Recorder()
    module = script.LitNet()
    trainer = script.lightning_trainer(
        prec_lightning.Precision("bf16-mixed", "cpu"), callbacks=[recorder], log_every_n_steps=1
    )
    with pytest.warns(prec.PrecWarning, match="non-finite"):
        trainer.fit(module, script.loader(poison_batch=1))

    assert [row["step_skipped"] for row in recorder.rows] == [False, True, False, False]
    assert [row["skipped_steps"] for row in recorder.rows] == [0, 1, 1, 1]
    assert "skipped_steps" not in recorder.rows[0]["metrics"]  # prec logs it once there is one, as prec.Trainer
    assert [row["metrics"]["skipped_steps"] for row in recorder.rows[1:]] == [1.0, 1.0, 1.0]
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert trainer.precision_plugin.metrics() == {"skipped_steps": 1.0}

    reference = script.PrecNet()  # prec.Trainer skips the same step
    with pytest.warns(prec.PrecWarning, match="non-finite"):
        script.prec_trainer("bf16-mixed").fit(reference, script.loader(poison_batch=1))
    script.assert_bitwise_equal(script.weights(module), script.weights(reference))


@pytest.mark.usefixtures("quiet", "third_party_16_mixed")
def test_the_loss_scale_reaches_callbacks_and_loggers(tmp_path: Path) -> None:
    recorder = Recorder()
    trainer = script.lightning_trainer(
        prec_lightning.Precision("16-mixed", "cpu", init_scale=2.0**20, growth_interval=2),
        callbacks=[recorder],
        log_every_n_steps=1,
        logger=CSVLogger(tmp_path, name="run", version=0),
    )
    trainer.fit(script.LitNet(), script.loader())

    scales = [row["metrics"]["loss_scale"] for row in recorder.rows]
    assert scales == [row["loss_scale"] for row in recorder.rows]
    assert scales[0] < 2.0**20  # float16 gradients overflowed: the scaler backed off and the step was skipped
    assert recorder.rows[0]["skipped_steps"] == 1
    assert all(isinstance(row["scaler"], torch.amp.GradScaler) for row in recorder.rows)  # trainer.scaler
    with open(tmp_path / "run" / "version_0" / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("loss_scale")]
    assert [float(row["loss_scale"]) for row in rows] == scales
    assert float(rows[-1]["skipped_steps"]) == recorder.rows[-1]["skipped_steps"]


@pytest.mark.usefixtures("quiet")
def test_numbers_are_logged_at_lightnings_cadence_and_can_be_turned_off() -> None:
    every_other, silent = Recorder(), Recorder()
    for plugin, recorder in (
        (prec_lightning.Precision("bf16-mixed", "cpu"), every_other),
        (prec_lightning.Precision("bf16-mixed", "cpu", log_metrics=False), silent),
    ):
        trainer = script.lightning_trainer(plugin, callbacks=[recorder], log_every_n_steps=2)
        with pytest.warns(prec.PrecWarning, match="non-finite"):
            trainer.fit(script.LitNet(), script.loader(poison_batch=0))
    assert ["skipped_steps" in row["metrics"] for row in every_other.rows] == [False, True, True, True]
    assert not any("skipped_steps" in row["metrics"] for row in silent.rows)
    assert silent.rows[-1]["skipped_steps"] == 1  # the attribute is there either way


@pytest.mark.usefixtures("quiet")
def test_nonfinite_raise_stops_the_run() -> None:
    trainer = script.lightning_trainer(prec_lightning.Precision("bf16-true", "cpu", nonfinite="raise"))
    with pytest.raises(prec.NonFiniteError):
        trainer.fit(script.LitNet(), script.loader(poison_batch=2))
    assert trainer.global_step == 2


@pytest.mark.usefixtures("quiet")
def test_nonfinite_off_lets_the_step_through() -> None:
    module = script.LitNet()
    trainer = script.lightning_trainer(prec_lightning.Precision("32-true", "cpu", nonfinite="off"))
    trainer.fit(module, script.loader(poison_batch=3))
    assert not all(torch.isfinite(p).all() for p in module.parameters())
    assert trainer.precision_plugin.skipped_steps == 0
