"""Evidence through the Trainer, on the CPU: what the monitor, the plan and the drift check see in models with one
known numerical problem each, and that a plan applied as it is fixes that problem."""

from __future__ import annotations

import math
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from _modules import load_module
from click.testing import CliRunner

import prec
from prec.callbacks.drift import drift_scalars
from prec.callbacks.numerics import run_formats
from prec.cli.app import main
from prec.numerics import NumericsRecorder, Plan, gradient_drift, measure
from prec.precision.standard import build_mixed

models = load_module(Path(__file__).with_name("models.py"), "_prec_numerics_models")


class Wrapped(prec.TrainingModule):
    """A numerics test model trained through the Trainer on mean squared error."""

    def __init__(self, net: torch.nn.Module, optimizer: str = "sgd", lr: float = 1e-2) -> None:
        super().__init__()
        self.net = net
        self.optimizer_name, self.lr = optimizer, lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = models.mse(self.net, batch)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        kind = torch.optim.AdamW if self.optimizer_name == "adamw" else torch.optim.SGD
        return kind(self.parameters(), lr=self.lr)


def _batches(inputs: int, outputs: int, count: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [models.batch(inputs, outputs, size=32, seed=seed) for seed in range(count)]


def _trainer(precision: str, callbacks: list[Any], steps: int, **kwargs: Any) -> prec.Trainer:
    return prec.Trainer(
        accelerator="cpu", precision=precision, max_steps=steps, callbacks=callbacks, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, logger=False, **kwargs,
    )  # fmt: skip


@pytest.fixture
def cpu_16_mixed() -> Iterator[None]:
    """16-mixed on the CPU, registered in code as a third-party plugin would."""

    class Cpu16:
        @staticmethod
        @prec.hookimpl
        def prec_register_precisions(register: Any) -> None:
            register(
                "16-mixed", "cpu", lambda accelerator, **options: build_mixed(
                    "16-mixed", "cpu", torch.float16, options, scaler=True
                ), description="float16 autocast with a grad scaler on the CPU (tests)",
            )  # fmt: skip

    name = prec.register_plugin(Cpu16, "evidence-cpu16")
    prec.reset_registry()
    yield
    prec.unregister_plugin(name)
    prec.reset_registry()


@pytest.fixture
def factories(monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable module of model factories for ``prec plan``."""
    module = types.ModuleType("prec_evidence_factories")
    module.overflowing = lambda: (Wrapped(models.Overflowing()), _batches(8, 4, 2))  # type: ignore[attr-defined]
    module.with_norms = lambda: (Wrapped(models.WithNorms(), "adamw", 1e-4), _batches(16, 4, 2))  # type: ignore[attr-defined]
    module.outlier = lambda: (Wrapped(models.Outlier()), _batches(16, 4, 2))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module.__name__


def _plan(spec: str, precision: str, tmp_path: Path) -> Plan:
    path = tmp_path / f"{precision}.json"
    result = CliRunner().invoke(main, ["plan", spec, "--precision", precision, "--output", str(path)])
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    return Plan.load(path)


# -- 1. a layer beyond float16's range ----------------------------------------------------------------------------
def test_at_32_true_the_monitor_reports_fp16_overflow_for_the_one_layer_beyond_its_range() -> None:
    monitor = prec.NumericsMonitor(every_n_steps=1, formats=["fp16"])
    _trainer("32-true", [monitor], steps=2).fit(Wrapped(models.Overflowing()), _batches(8, 4))
    overflowing = {
        key.split("/")[1]
        for key, value in monitor.last_scalars.items()
        if key.endswith("/activations/fp16/overflow") and value > 0
    }
    assert overflowing == {"net.big"}
    assert monitor.last_scalars["numerics/net.big/activations/fp32/overflow"] == 0.0


def test_a_16_mixed_plan_keeps_the_layer_in_float32_and_the_run_then_skips_no_step(
    cpu_16_mixed: None, factories: str, tmp_path: Path
) -> None:
    plan = _plan(f"{factories}:overflowing", "16-mixed", tmp_path)
    assert [item.module for item in plan.keep_float32] == ["net.big"]
    assert "fp16" in plan.keep_float32[0].reason and "65504" in plan.keep_float32[0].reason
    options = {"init_scale": 1.0}  # no loss-scale search: every skip is the model's own overflow

    monitor = prec.NumericsMonitor(every_n_steps=1)
    plain = _trainer("16-mixed", [monitor], steps=4, precision_options=options)
    with pytest.warns(prec.PrecWarning, match=r"optimizer step 0 was skipped.*big \(activations"):
        plain.fit(Wrapped(models.Overflowing()), _batches(8, 4))
    assert plain.precision_plugin.skipped_steps == 4

    planned = _trainer("16-mixed", [], steps=4, precision_options={**options, "plan": str(tmp_path / "16-mixed.json")})
    with warnings.catch_warnings():
        warnings.simplefilter("error", prec.PrecWarning)
        planned.fit(Wrapped(models.Overflowing()), _batches(8, 4))
    assert planned.precision_plugin.skipped_steps == 0


# -- 2. bf16-true weights that do not move -------------------------------------------------------------------------
def _lost_norm_update(master_weights: str | None) -> float:
    monitor = prec.NumericsMonitor(every_n_steps=1, kinds=["updates"])
    options = {"master_weights": master_weights} if master_weights else {}
    trainer = _trainer("bf16-true", [monitor], steps=3, precision_options=options)
    trainer.fit(Wrapped(models.WithNorms(), "adamw", 1e-4), _batches(16, 4))
    return monitor.last_scalars["numerics/net.norm/weight/lost_update"]


def test_bf16_true_norm_gains_lose_their_adamw_updates_and_kahan_master_weights_keep_them(
    factories: str, tmp_path: Path
) -> None:
    assert _lost_norm_update(None) > 0.9
    assert _lost_norm_update("kahan") < 0.1
    plan = _plan(f"{factories}:with_norms", "bf16-true", tmp_path)
    assert plan.master_weights is not None and plan.master_weights.mode == "kahan"
    assert "net.norm.weight" in plan.master_weights.reason and "AdamW" in plan.master_weights.reason


# -- 3. fp8 and an outlier ------------------------------------------------------------------------------------------
def _fp8_drift(plan: Plan | None) -> tuple[prec.DriftCheck, list[str]]:
    drift = prec.DriftCheck(every_n_steps=1)
    options: dict[str, Any] = {"emulate": True}
    if plan is not None:
        options["plan"] = plan
    trainer = _trainer("fp8-mixed", [drift], steps=2, precision_options=options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Wrapped(models.Outlier()), _batches(16, 4))
    return drift, [str(w.message) for w in caught if issubclass(w.category, prec.PrecWarning)]


def test_fp8_the_outlier_layer_is_worst_in_e4m3_left_out_by_the_plan_and_the_drift_check_warns_when_forced(
    factories: str, tmp_path: Path
) -> None:
    pytest.importorskip("torchao")
    measured = measure(models.Outlier(), models.batch(16, 4), models.mse, precision="fp8-mixed")
    assert measured.worst("e4m3")[0][0] == "outlier"
    plan = _plan(f"{factories}:outlier", "fp8-mixed", tmp_path)
    assert "net.outlier" in [item.module for item in plan.fp8_exclude]

    forced, warned = _fp8_drift(None)
    assert any("DriftCheck" in text and "net.outlier" in text for text in warned), warned
    kept, warned = _fp8_drift(plan)  # fp8's own rounding may still move the loss; the layer no longer drifts
    assert not any("DriftCheck" in text and "net.outlier" in text for text in warned), warned
    assert kept.last_scalars["drift/net.outlier/cosine"] > forced.last_scalars["drift/net.outlier/cosine"]


# -- 4. the Trainer and a loop of your own agree ---------------------------------------------------------------------
def test_monitor_and_drift_check_give_the_same_numbers_through_the_trainer_and_a_loop_of_your_own() -> None:
    batch = _batches(8, 4, 1)
    monitor = prec.NumericsMonitor(every_n_steps=1, formats=["fp16", "e4m3"])
    drift = prec.DriftCheck(every_n_steps=1)
    torch.manual_seed(3)
    _trainer("32-true", [monitor, drift], steps=1).fit(
        Wrapped(models.WithNorms()), [(b[0][:, :16].repeat(1, 2)[:, :16], b[1]) for b in batch]
    )

    torch.manual_seed(3)
    model = Wrapped(models.WithNorms())
    optimizer = model.configure_optimizers()
    x, y = batch[0][0][:, :16].repeat(1, 2)[:, :16], batch[0][1]
    recorder = NumericsRecorder(model, run_formats("32-true", ["fp16", "e4m3"]))
    recorder.start()
    loss = models.mse(model.net, (x, y))
    loss.backward()
    report = gradient_drift(model.net, (x, y), models.mse, reference_dtype=torch.float64, low_loss=loss)
    recorder.before_optimizer_step(optimizer)
    optimizer.step()
    recorder.after_optimizer_step()
    own = recorder.stop().scalars()

    assert own.keys() == monitor.last_scalars.keys()
    for key, value in own.items():
        assert math.isclose(monitor.last_scalars[key], value, rel_tol=1e-9, abs_tol=1e-12), key
    expected = {key.replace("drift/", "drift/net.") if key != "drift/loss_gap" else key: value
                for key, value in drift_scalars(report).items()}  # fmt: skip
    assert expected.keys() == drift.last_scalars.keys()
    for key, value in expected.items():
        assert math.isclose(drift.last_scalars[key], value, rel_tol=1e-9, abs_tol=1e-12), key
