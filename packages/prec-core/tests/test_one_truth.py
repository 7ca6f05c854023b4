"""Each fact has one owner: the Trainer's settings, the grad scaler's options."""

from __future__ import annotations

import pytest
import torch

import prec


def test_fast_dev_run_leaves_no_disagreeing_copy() -> None:
    trainer = prec.Trainer(accelerator="cpu", fast_dev_run=2, enable_progress_bar=False)
    assert trainer.config.max_epochs == 1000 and trainer.config.logger is not None  # what was passed
    assert trainer.settings.max_epochs == trainer.max_epochs == 1  # what the run uses, read in one place
    assert trainer.settings.max_steps == trainer.max_steps == 2
    assert trainer.limit_val_batches == trainer.settings.limit_val_batches == 2
    assert trainer.logger is None and trainer.log_sink is None and trainer.settings.logger is None
    assert "max_epochs" not in vars(trainer) and "logger" not in vars(trainer)


def test_a_setting_changed_on_the_trainer_changes_what_the_run_uses_and_is_checked() -> None:
    trainer = prec.Trainer(accelerator="cpu", max_epochs=2, enable_progress_bar=False, logger=False)
    trainer.max_epochs = 3
    assert trainer.max_epochs == trainer.settings.max_epochs == 3 and trainer.config.max_epochs == 2
    with pytest.raises(prec.ConfigurationError, match="max_epochs"):
        trainer.max_epochs = -5


def test_min_scale_is_accepted_alike_by_precision_options_and_mixed_precision() -> None:
    direct = prec.MixedPrecision("16-mixed", "cpu", torch.float16, scaler=True, min_scale=4.0, init_scale=1024.0)
    assert direct.min_scale == 4.0
    from prec.precision.mixed import SCALER_OPTIONS
    from prec.precision.standard import mixed_options

    assert {option.name for option in mixed_options(scaler=True)} >= set(SCALER_OPTIONS)
    assert "min_scale" in SCALER_OPTIONS


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"min_scale": 2.0**20}, "above init_scale"),
        ({"min_scale": 8.0, "init_scale": 4.0}, "above init_scale"),
        ({"min_scale": 0.0}, "min_scale"),
        ({"min_scale": float("inf")}, "min_scale"),
        ({"enabled": False}, "bf16-mixed"),
    ],
)
def test_scaler_options_are_checked_by_one_declaration(options: dict[str, object], match: str) -> None:
    with pytest.raises(prec.ConfigurationError, match=match):
        prec.MixedPrecision("16-mixed", "cpu", torch.float16, scaler=True, **options)
