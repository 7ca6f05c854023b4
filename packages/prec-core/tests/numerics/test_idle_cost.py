"""What NumericsMonitor and DriftCheck cost on the steps they leave alone, counted in calls, never timed.

A monitor is left on for a whole run, so its idle steps must stay next to free: each overridden step hook reads
an attribute, compares and returns, without calling anything (no property, no engine code, no torch call).
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import torch
from _modules import load_module

import prec

models = load_module(Path(__file__).with_name("models.py"), "_prec_numerics_models")

_PREC = Path(prec.__file__).parent
_OWN_CODE = (str(_PREC / "callbacks" / "numerics.py"), str(_PREC / "callbacks" / "drift.py"), str(_PREC / "numerics"))
_NEVER = 10**9  # a cadence that never comes within these runs


Net = models.TrainedWithNorms


def _fit_calls(steps: int, callbacks: list[prec.Callback]) -> dict[str, int]:
    """Python and C call events of a whole ``fit`` of ``steps``, and those in the callbacks' own code."""
    trainer = prec.Trainer(accelerator="cpu", max_steps=steps, callbacks=callbacks, logger=False,
                           enable_progress_bar=False, enable_model_summary=False,
                           enable_checkpointing=False)  # fmt: skip
    batches = [models.batch(16, 4, size=16, seed=seed) for seed in range(steps)]
    counts = {"all": 0, "own": 0}

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event in ("call", "c_call"):
            counts["all"] += 1
            if frame.f_code.co_filename.startswith(_OWN_CODE):
                counts["own"] += 1

    gc.collect()  # the garbage of earlier tests is no step's: no collection runs its finalizers in the count
    gc.disable()
    sys.setprofile(profile)
    try:
        trainer.fit(Net(), batches)
    finally:
        sys.setprofile(None)
        gc.enable()
    return counts


def _per_step(make_callbacks: Callable[[], list[prec.Callback]]) -> dict[str, float]:
    """Calls of one step: the difference of a 12-step and a 6-step fit, over 6 (set-up and end cancel out)."""
    _fit_calls(2, make_callbacks())  # first-call costs of this process are no step's
    short, long = _fit_calls(6, make_callbacks()), _fit_calls(12, make_callbacks())
    return {kind: (long[kind] - short[kind]) / 6 for kind in short}


@pytest.mark.parametrize(
    "make_callback",
    [lambda: prec.NumericsMonitor(every_n_steps=_NEVER), lambda: prec.DriftCheck(every_n_steps=_NEVER)],
    ids=["NumericsMonitor", "DriftCheck"],
)
def test_an_idle_step_runs_one_call_per_overridden_step_hook_and_nothing_more(
    make_callback: Callable[[], prec.Callback],
) -> None:
    off, idle = _per_step(list), _per_step(lambda: [make_callback()])
    assert idle["own"] == 3  # the three step hooks it overrides, each returning at once
    # The rest is the Trainer calling those hooks (about 17 for the monitor; 21 before its idle path was cut).
    assert idle["all"] - off["all"] <= 19


def test_a_measuring_step_does_run_the_engine() -> None:
    """The counter sees the callbacks' code: a monitor recording every step runs hundreds of its calls per step."""
    measuring = _per_step(lambda: [prec.NumericsMonitor(every_n_steps=1, top=0)])
    assert measuring["own"] > 100


class SkipsBatchOne(Net):
    """Batch 1 returns None (no backward, no optimizer step); the losses of the others are kept."""

    def __init__(self) -> None:
        super().__init__()
        self.losses: dict[int, float] = {}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        loss = super().training_step(batch, batch_idx)
        self.losses[batch_idx] = float(loss.detach())
        return None if batch_idx == 1 else loss


def test_drift_check_checks_the_batch_that_steps_after_one_that_returned_none() -> None:
    check = prec.DriftCheck(every_n_steps=2)
    trainer = prec.Trainer(accelerator="cpu", max_steps=2, callbacks=[check], logger=False, enable_progress_bar=False,
                           enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    module = SkipsBatchOne()
    with pytest.warns(prec.PrecWarning, match="returned None"):
        trainer.fit(module, [models.batch(16, 4, size=16, seed=seed) for seed in range(3)])
    assert check.checked_steps == [1]
    assert check.reports[-1].low_loss == pytest.approx(module.losses[2])
