"""Clipping, accumulation, LR schedulers, manual optimization, several optimizers and teardown, under every
kind of precision; the scaler paths use torch's real GradScaler on CPU tensors."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import prec

pytestmark = pytest.mark.filterwarnings("ignore::prec.errors.PerformanceWarning")


def scaler_precision(init_scale: float = 2.0**10, growth_interval: int = 1000) -> prec.MixedPrecision:
    """16-mixed on CPU with a real torch GradScaler (the registry offers 16-mixed on GPUs only)."""
    return prec.MixedPrecision(
        "16-mixed", "cpu", torch.float16, scaler=True, init_scale=init_scale, growth_interval=growth_interval
    )


def make_loader(n: int = 32, batch_size: int = 4) -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=generator)
    y = 10 * x.sum(dim=1, keepdim=True) + 3
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def trainer(**kwargs: Any) -> prec.Trainer:
    kwargs.setdefault("max_epochs", 1)
    return prec.Trainer(accelerator="cpu", enable_progress_bar=False, logger=False, **kwargs)


class Net(prec.TrainingModule):
    def __init__(self, lr: float = 0.1, optimizer: str = "sgd") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 1)
        self.lr = lr
        self.optimizer_kind = optimizer
        self.grad_norms: list[float] = []
        self.grad_max: list[float] = []
        self.backwards = 0
        self.steps = 0
        self.inf_at: set[int] = set()
        self.batch_idx = -1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.batch_idx = batch_idx
        x, y = batch
        return torch.nn.functional.mse_loss(self(x).float(), y)

    def on_after_backward(self) -> None:
        self.backwards += 1
        if self.batch_idx in self.inf_at:
            self.layer.weight.grad[0, 0] = math.inf

    def on_before_zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        self.steps += 1
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        self.grad_norms.append(float(torch.norm(torch.stack([g.norm() for g in grads]))))
        self.grad_max.append(max(float(g.abs().max()) for g in grads))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


# -- clipping ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "scaler"])
def test_norm_clipping_acts_on_unscaled_gradients(precision: str) -> None:
    options: dict[str, Any] = {"plugins": [scaler_precision()]} if precision == "scaler" else {"precision": precision}
    model = Net(lr=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    trainer(max_steps=1, gradient_clip_val=0.01, **options).fit(model, make_loader())
    # Clipped on true gradients: the norm is the clip value (clipping scaled ones would leave it ~1000x smaller).
    assert model.grad_norms == [pytest.approx(0.01, rel=1e-3)]
    update = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters(), strict=True)])
    assert float(update.norm()) == pytest.approx(0.01, rel=1e-3)  # SGD lr=1 stepped with the clipped gradient


@pytest.mark.parametrize("precision", ["32-true", "scaler"])
def test_value_clipping(precision: str) -> None:
    options: dict[str, Any] = {"plugins": [scaler_precision()]} if precision == "scaler" else {"precision": precision}
    model = Net()
    trainer(max_steps=2, gradient_clip_val=0.5, gradient_clip_algorithm="value", **options).fit(model, make_loader())
    assert model.grad_max == [pytest.approx(0.5), pytest.approx(0.5)]


@pytest.mark.parametrize("value", [0, None])
def test_zero_or_none_means_no_clipping(value: float | None) -> None:
    model = Net()
    trainer(max_steps=1, gradient_clip_val=value).fit(model, make_loader())
    assert model.grad_norms[0] > 1.0


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"gradient_clip_val": -1.0}, "gradient_clip_val"),
        ({"gradient_clip_val": "1"}, "gradient_clip_val"),
        ({"gradient_clip_algorithm": "max"}, "gradient_clip_algorithm"),
        ({"accumulate_grad_batches": 0}, "accumulate_grad_batches"),
    ],
)
def test_bad_optimization_options_are_configuration_errors(options: dict[str, Any], match: str) -> None:
    with pytest.raises(prec.ConfigurationError, match=match):
        trainer(**options)


def test_clip_gradients_with_both_trainer_and_call_values_is_an_error() -> None:
    class Clipping(Net):
        def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
            self.clip_gradients(optimizer, gradient_clip_val=0.1)

    with pytest.raises(prec.ConfigurationError, match="both set it"):
        trainer(max_steps=1, gradient_clip_val=1.0).fit(Clipping(), make_loader())


def test_clip_gradients_in_a_hook_without_trainer_clipping() -> None:
    class Clipping(Net):
        def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
            self.clip_gradients(optimizer, gradient_clip_val=0.02)

    model = Clipping()
    trainer(max_steps=1, plugins=[scaler_precision()]).fit(model, make_loader())
    assert model.grad_norms == [pytest.approx(0.02, rel=1e-3)]


# -- accumulation --------------------------------------------------------------------------------------------
def test_accumulation_matches_a_batch_n_times_larger() -> None:
    accumulated, large = Net(), Net()
    trainer(accumulate_grad_batches=2).fit(accumulated, make_loader(batch_size=4))
    trainer().fit(large, make_loader(batch_size=8))
    assert accumulated.backwards == 8 and accumulated.steps == 4 and large.steps == 4
    for a, b in zip(accumulated.parameters(), large.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_accumulation_steps_and_updates_the_scaler_once_per_optimizer_step() -> None:
    precision = scaler_precision(init_scale=2.0**4, growth_interval=1)  # the scale doubles on every update
    model = Net(lr=0.01)
    fit = trainer(accumulate_grad_batches=3, plugins=[precision])
    fit.fit(model, make_loader(n=36, batch_size=4))  # 9 batches -> 3 optimizer steps
    assert model.backwards == 9 and model.steps == 3 and fit.global_step == 3
    assert precision.scaler.get_scale() == 2.0**7


def test_accumulation_steps_on_the_last_short_window_of_an_epoch() -> None:
    model = Net()
    fit = trainer(accumulate_grad_batches=3, max_epochs=2)
    fit.fit(model, make_loader(n=16, batch_size=4))  # 4 batches: windows of 3 and 1
    assert model.steps == 4 and fit.global_step == 4


# -- LR schedulers ---------------------------------------------------------------------------------------------
class Scheduled(Net):
    def __init__(self, interval: str) -> None:
        super().__init__(lr=0.01)
        self.interval = interval

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.interval}}


def test_step_scheduler_is_not_stepped_after_a_skipped_step() -> None:
    model = Scheduled("step")
    model.inf_at = {2}
    precision = scaler_precision()
    fit = trainer(max_steps=5, plugins=[precision])
    fit.fit(model, make_loader())
    assert precision.skipped_steps == 1
    scheduler = fit.lr_scheduler_configs[0].scheduler
    assert scheduler.last_epoch == 4
    assert fit.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01 * 0.5**4)


def test_epoch_scheduler_steps_once_per_epoch() -> None:
    model = Scheduled("epoch")
    fit = trainer(max_epochs=3)
    fit.fit(model, make_loader())
    assert fit.lr_scheduler_configs[0].scheduler.last_epoch == 3 and model.lr_schedulers() is not None


# -- manual optimization ---------------------------------------------------------------------------------------
class Manual(Net):
    def __init__(self, steps_per_batch: int = 1, clip: float | None = None, lr: float = 1.0) -> None:
        super().__init__(lr=lr)
        self.automatic_optimization = False
        self.steps_per_batch = steps_per_batch
        self.clip = clip
        self.clipped_norms: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt = self.optimizers()
        for _ in range(self.steps_per_batch):
            opt.zero_grad()
            self.manual_backward(super().training_step(batch, batch_idx))
            if self.clip is not None:
                self.clip_gradients(opt, gradient_clip_val=self.clip)
                grads = [p.grad for p in self.parameters()]
                self.clipped_norms.append(float(torch.norm(torch.stack([g.norm() for g in grads]))))
            opt.step()


def count_scaler_steps(precision: prec.MixedPrecision) -> list[int]:
    calls: list[int] = []
    original = precision.scaler.step

    def step(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    precision.scaler.step = step  # counts calls into the real scaler
    return calls


def test_manual_optimization_clips_unscaled_gradients_under_a_scaler() -> None:
    precision = scaler_precision()
    calls = count_scaler_steps(precision)
    model = Manual(clip=0.01)
    before = [p.detach().clone() for p in model.parameters()]
    trainer(max_steps=1, plugins=[precision]).fit(model, make_loader())
    assert model.clipped_norms == [pytest.approx(0.01, rel=1e-3)]  # Lightning would clip the scaled gradients
    update = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters(), strict=True)])
    assert float(update.norm()) == pytest.approx(0.01, rel=1e-3)
    assert len(calls) == 1


def test_manual_optimization_takes_one_scaler_step_per_opt_step() -> None:
    precision = scaler_precision(init_scale=2.0**4, growth_interval=1)
    calls = count_scaler_steps(precision)
    # global_step counts each opt.step() (as Lightning does): 3 batches of 2 steps
    trainer(max_steps=6, plugins=[precision]).fit(Manual(steps_per_batch=2, lr=0.001), make_loader())
    assert len(calls) == 6
    assert precision.scaler.get_scale() == 2.0**10  # each of the 6 steps was followed by one update


@pytest.mark.parametrize("option", [{"gradient_clip_val": 1.0}, {"accumulate_grad_batches": 2}])
def test_trainer_clipping_or_accumulation_with_manual_optimization_is_an_error(option: dict[str, Any]) -> None:
    with pytest.raises(prec.ConfigurationError, match="manual optimization"):
        trainer(max_steps=1, **option).fit(Manual(), make_loader())


# -- several optimizers, None ----------------------------------------------------------------------------------
class TwoOptimizers(Net):
    def __init__(self) -> None:
        super().__init__(lr=0.01)
        self.other = torch.nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.batch_idx = batch_idx
        return torch.nn.functional.mse_loss((self.layer(x) + self.other(x)).float(), y)

    def configure_optimizers(self) -> Any:
        return [torch.optim.SGD(self.layer.parameters(), lr=0.01), torch.optim.Adam(self.other.parameters())]


def test_several_optimizers_step_and_the_scaler_updates_once() -> None:
    precision = scaler_precision(init_scale=2.0**4, growth_interval=1)
    model = TwoOptimizers()
    before = [p.detach().clone() for p in model.parameters()]
    trainer(max_steps=3, plugins=[precision]).fit(model, make_loader())
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert precision.scaler.get_scale() == 2.0**7


def test_training_step_returning_none_skips_the_step_and_warns_once() -> None:
    class Skipping(Net):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
            return None if batch_idx % 2 else super().training_step(batch, batch_idx)

    model = Skipping()
    fit = trainer(max_steps=6, plugins=[scaler_precision()])
    with pytest.warns(prec.PrecWarning, match="returned None") as record:
        fit.fit(model, make_loader())
    assert len([w for w in record if "returned None" in str(w.message)]) == 1
    # max_steps counts optimizer steps: the batches that returned None are not steps.
    assert model.backwards == 4 and model.steps == 4 and fit.global_step == 4  # 8 batches, 4 return None


# -- teardown --------------------------------------------------------------------------------------------------
class CountingPrecision(prec.Precision):
    def __init__(self) -> None:
        self.teardowns = 0

    def teardown(self) -> None:
        self.teardowns += 1


def test_precision_teardown_runs_once_per_run_also_when_it_raises() -> None:
    precision = CountingPrecision()
    fit = trainer(max_steps=2, plugins=[precision])
    model = Net()
    model.validation_step = model.test_step = lambda batch, idx: None  # type: ignore[method-assign]
    fit.fit(model, make_loader(), make_loader(8))
    assert precision.teardowns == 1
    fit.validate(model, make_loader(8))
    fit.test(model, make_loader(8))
    fit.predict(model, make_loader(8))
    assert precision.teardowns == 4

    class Failing(Net):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        trainer(max_steps=2, plugins=[precision]).fit(Failing(), make_loader())
    assert precision.teardowns == 5


def test_manual_optimization_leaves_scheduler_stepping_to_the_user() -> None:
    """As in Lightning: with automatic_optimization=False the user calls ``sch.step()``; prec never adds one."""

    class ManualScheduled(Manual):
        def training_step(self, batch: Any, batch_idx: int) -> None:
            super().training_step(batch, batch_idx)
            if batch_idx % 2 == 1:
                self.lr_schedulers().step()

        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.SGD(self.parameters(), lr=0.01)
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    fit = trainer(max_epochs=2)
    fit.fit(ManualScheduled(lr=0.01), make_loader(n=16))
    assert fit.lr_scheduler_configs[0].scheduler.last_epoch == 4  # 8 batches, the user stepped every second one
