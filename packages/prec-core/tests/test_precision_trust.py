"""A precision keeps its promises: a plugin's conversion is checked against what it declares, and the non-finite
guard works at every default dtype, names every parameter and says what it skipped."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import prec
from prec.precision import MixedPrecision


def loader(batches: int = 4, features: int = 4) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8 * batches, features, generator=generator)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


def trainer(**kwargs) -> prec.Trainer:
    kwargs.setdefault("max_epochs", 1)
    return prec.Trainer(accelerator="cpu", enable_progress_bar=False, logger=False, **kwargs)


class Regressor(prec.TrainingModule):
    def __init__(self, optimizer: str = "sgd", nan_at: int = -1) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.optimizer, self.nan_at, self.calls = optimizer, nan_at, 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.calls == self.nan_at:
            x = x * float("nan")  # NaN from the data: not an overflow
        self.calls += 1
        return torch.nn.functional.mse_loss(self.layer(x).float(), y.float())

    def configure_optimizers(self):
        if self.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=1e-3)
        return torch.optim.SGD(self.parameters(), lr=0.01)


# -- 1. a plugin's conversion is checked against what its precision declares ---------------------------------------
class _HalvingPrecision(prec.Precision):
    """Claims 32-true, makes the model float16."""

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return module.half()


class _HalvingPlugin:
    @prec.hookimpl
    def prec_register_precisions(self, register):  # noqa: ANN001
        register("32-true", "cpu", lambda accelerator: _HalvingPrecision(), priority=1)


@pytest.fixture
def halving_plugin() -> object:
    name = prec.register_plugin(_HalvingPlugin(), name="halving-plugin")
    yield name
    prec.unregister_plugin(name)


def test_a_plugin_whose_conversion_breaks_its_declared_dtype_is_named(halving_plugin: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", prec.PrecWarning)  # "a plugin replaces a built-in pair"
        run = trainer(precision="32-true")
        with pytest.raises(
            prec.PluginError,
            match=r"halving-plugin.*layer\.weight \(torch\.float32 -> torch\.float16\).*'32-true' declares"
            r" torch\.float32",
        ):
            run.fit(Regressor(), loader())


def test_a_model_the_user_built_in_another_dtype_is_not_blamed_on_the_plugin() -> None:
    model = Regressor().to(torch.float64)  # 32-true's conversion is a no-op: the dtype is the user's choice
    run = trainer(precision="32-true", max_steps=1)
    run.fit(model, DataLoader(TensorDataset(torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 1)), batch_size=8))
    assert model.layer.weight.dtype == torch.float64


def test_keep_float32_modules_and_declared_extra_dtypes_pass() -> None:
    run = trainer(precision="bf16-true", precision_options={"keep_float32": ["layer"]}, max_steps=1)
    model = Regressor()
    run.fit(model, loader())
    assert model.layer.weight.dtype == torch.float32


# -- 8. the guard's flags are float32 whatever the default dtype ---------------------------------------------------
class TwoOptimizers(prec.TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        first, second = self.optimizers()
        loss = torch.nn.functional.mse_loss(self.b(self.a(x)), y.to(x.dtype))
        self.manual_backward(loss)
        first.step()
        second.step()
        first.zero_grad()
        second.zero_grad()

    def configure_optimizers(self):
        return torch.optim.SGD(self.a.parameters(), lr=0.01), torch.optim.SGD(self.b.parameters(), lr=0.01)


@pytest.mark.parametrize(
    ("precision", "options"), [("64-true", {}), ("bf16-true", {"master_weights": "fp32"}), ("bf16-true", {})]
)
def test_manual_optimization_with_two_optimizers_steps_at_every_default_dtype(precision, options) -> None:
    pytest.importorskip("prec_double") if precision == "64-true" else None
    model = TwoOptimizers()
    before = model.b.weight.detach().clone()
    run = trainer(precision=precision, precision_options=options, max_steps=2)
    run.fit(model, loader())
    assert not torch.equal(before.to(model.b.weight.dtype), model.b.weight.detach())


def test_the_guard_flags_are_float32_when_first_made_under_another_default_dtype() -> None:
    precision = prec.get_precision("32-true", "cpu")
    model = torch.nn.Linear(2, 1).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(3, 2, dtype=torch.float64)).sum().backward()
    with prec.precision.default_dtype(torch.float64):
        precision.optimizer_step(optimizer)
    assert not precision.step_skipped


# -- 4. master weights: the guard names the model's parameters --------------------------------------------------
def test_a_skip_under_fp32_master_weights_names_the_parameter() -> None:
    model = Regressor(nan_at=1)
    run = trainer(precision="bf16-true", precision_options={"master_weights": "fp32"})
    with pytest.warns(prec.PrecWarning, match=r"non-finite gradients in: layer\.weight, layer\.bias\.") as caught:
        run.fit(model, loader())
    assert not any("param_groups[" in str(w.message) for w in caught)


# -- 5. a NaN from the data under a grad scaler warns, and is told from an overflow ------------------------------
def scaled() -> MixedPrecision:
    return MixedPrecision("16-mixed", "cpu", torch.float16, scaler=True, init_scale=2.0**4)


def test_a_nan_from_the_data_under_a_grad_scaler_warns_and_is_not_called_an_overflow() -> None:
    run = trainer(plugins=[scaled()])
    with pytest.warns(
        prec.PrecWarning, match=r"skipped an optimizer step .*layer\.weight.*the loss was NaN before loss scaling"
    ):
        run.fit(Regressor(nan_at=2), loader())
    assert run.precision_plugin.skipped_steps == 1


def test_an_overflow_under_a_grad_scaler_is_called_one() -> None:
    class Overflowing(Regressor):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * 6e4 if batch_idx == 1 else loss  # finite in float32, inf once scaled in float16

    precision = MixedPrecision("16-mixed", "cpu", torch.float16, scaler=True, init_scale=2.0**10)
    run = trainer(plugins=[precision])
    with pytest.warns(
        prec.PrecWarning, match=r"under loss scaling.*Cause: an overflow: the loss was finite before loss scaling"
    ):
        run.fit(Overflowing(), loader())


# -- a loop of your own takes the bound fast path, cached weakly per optimizer ----------------------------------
def own_step(precision: prec.Precision, model: torch.nn.Module, optimizer, x: torch.Tensor) -> None:  # noqa: ANN001
    optimizer.zero_grad()
    precision.backward(model(x).pow(2).sum(), model)
    precision.optimizer_step(optimizer)


def test_a_loop_of_your_own_binds_once_per_optimizer_and_does_not_keep_it_alive() -> None:
    import weakref

    from prec.precision.guard import BOUND_STEP

    precision = prec.get_precision("32-true", "cpu")
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    own_step(precision, model, optimizer, torch.randn(2, 4))
    entry = optimizer.__dict__[BOUND_STEP]
    own_step(precision, model, optimizer, torch.randn(2, 4))
    assert optimizer.__dict__[BOUND_STEP] is entry  # not bound again
    assert BOUND_STEP not in optimizer.state_dict()
    alive = weakref.ref(optimizer)
    del optimizer, entry
    assert alive() is None  # freed at once: no reference cycle through the cached step


def test_a_loop_of_your_own_binds_anew_when_a_param_group_is_added() -> None:
    precision = prec.get_precision("32-true", "cpu")
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model[0].parameters(), lr=0.1)
    own_step(precision, model, optimizer, torch.randn(2, 4))
    optimizer.add_param_group({"params": model[1].parameters()})
    before = model[1].weight.detach().clone()
    own_step(precision, model, optimizer, torch.randn(2, 4))
    assert not torch.equal(before, model[1].weight)  # the new group is stepped
    model[1].weight.grad = torch.full_like(model[1].weight, float("nan"))
    after = model[1].weight.detach().clone()
    with pytest.warns(prec.PrecWarning, match=r"non-finite gradients in: param_groups\[1\]\[0\]"):
        precision.optimizer_step(optimizer)  # and checked
    assert precision.step_skipped and torch.equal(after, model[1].weight)
    model[1].weight.grad.zero_()
    precision.optimizer_step(optimizer)
    assert not precision.step_skipped
