"""The non-finite guard and the loss-scale floor: no inf/NaN gradient ever reaches the weights, nothing is silent."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import prec
from prec.precision import MixedPrecision, NonFinitePolicy

CPU_PRECISIONS = ["32-true", "bf16-mixed", "bf16-true", "16-true", "64-true"]


class Faulty(prec.TrainingModule):
    """A regressor whose loss (``fault="loss"``), input (``"input"``) or gradient (``"grad"``) turns non-finite on
    the training steps (counted from 0) in ``bad``."""

    def __init__(self, fault: str = "loss", bad: range = range(0), value: float = float("inf"), lr: float = 0.05):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.fault, self.bad, self.value, self.lr = fault, bad, value, lr
        self.calls = 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        faulty = self.calls in self.bad
        self.calls += 1
        if faulty and self.fault == "input":
            x = x * self.value
        out = self.layer(x)
        if faulty and self.fault == "grad":
            out.register_hook(lambda grad: grad * self.value)
        loss = torch.nn.functional.mse_loss(out.float(), y.float())
        if faulty and self.fault == "loss":
            loss = loss * self.value
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def loader(batches: int = 4) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8 * batches, 4, generator=generator)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


def finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def fit(model, precision="32-true", epochs=2, **kwargs) -> prec.Trainer:
    trainer = prec.Trainer(
        accelerator="cpu", precision=precision, max_epochs=epochs, enable_progress_bar=False, logger=False, **kwargs
    )
    trainer.fit(model, loader())
    return trainer


@pytest.mark.parametrize("precision", CPU_PRECISIONS)
@pytest.mark.parametrize(("fault", "value"), [("loss", float("inf")), ("input", float("nan")), ("grad", float("inf"))])
def test_a_nonfinite_step_is_skipped_counted_and_named_at_every_precision(precision, fault, value) -> None:
    torch.manual_seed(0)
    model = Faulty(fault, bad=range(2, 3), value=value)
    expected = r"skipped an optimizer step .* at optimizer step 2.*layer\.(weight|bias)"
    with pytest.warns(prec.PrecWarning, match=expected):
        trainer = fit(model, precision)
    assert finite(model)
    assert trainer.precision_plugin.skipped_steps == 1
    assert trainer.global_step == 8  # a skipped step still counts as a step of the loop
    assert trainer.callback_metrics["skipped_steps"] == 1


def test_raise_mode_stops_before_the_update_and_names_the_parameters() -> None:
    torch.manual_seed(0)
    model = Faulty("grad", bad=range(1, 2))
    trainer = prec.Trainer(accelerator="cpu", max_epochs=1, enable_progress_bar=False, logger=False, nonfinite="raise")
    before: dict[str, torch.Tensor] = {}

    class Snapshot(prec.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            before.update({k: v.clone() for k, v in module.state_dict().items()})

    trainer.callbacks.append(Snapshot())
    with pytest.raises(prec.NonFiniteError, match=r"at optimizer step 1.*layer\.weight"):
        trainer.fit(model, loader())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the bad step was not applied


def test_off_mode_lets_a_nonfinite_update_through() -> None:
    """What ``nonfinite='off'`` gives up, pinned so the docs stay true."""
    model = Faulty("grad", bad=range(1, 2))
    fit(model, epochs=1, nonfinite="off")
    assert not finite(model)


def test_a_long_run_of_skips_warns_then_raises() -> None:
    model = Faulty("loss", bad=range(100))
    policy = NonFinitePolicy(warn_after=3, raise_after=6)
    with pytest.warns(prec.PrecWarning, match="3 consecutive optimizer steps were skipped"):
        with pytest.raises(prec.NonFiniteError, match="6 consecutive optimizer steps were skipped.*no longer trains"):
            fit(model, epochs=5, nonfinite=policy)
    assert finite(model)


def test_a_good_step_resets_the_run_of_skips() -> None:
    model = Faulty("loss", bad=range(0, 8, 2))  # every other step is bad: never 2 in a row
    with pytest.warns(prec.PrecWarning, match="skipped an optimizer step"):
        trainer = fit(model, nonfinite=NonFinitePolicy(warn_after=2, raise_after=2))
    assert trainer.precision_plugin.skipped_steps == 4 and finite(model)


def test_fused_optimizers_skip_through_the_device_side_protocol() -> None:
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    precision = prec.get_precision("32-true", "cpu")
    precision.setup_module(model)
    before = [p.clone() for p in model.parameters()]
    (model(torch.randn(2, 4)).sum() * float("inf")).backward()
    with pytest.warns(prec.PrecWarning, match="skipped"):
        precision.optimizer_step(optimizer)
    assert precision.step_skipped and precision.skipped_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert int(optimizer.state[model.weight]["step"]) == 0  # the fused kernel undid its step count too
    optimizer.zero_grad()
    model(torch.randn(2, 4)).sum().backward()
    precision.optimizer_step(optimizer)
    assert not precision.step_skipped and not torch.equal(before[0], model.weight)


def test_skip_counters_survive_a_checkpoint(tmp_path) -> None:
    model = Faulty("loss", bad=range(1, 3))
    with pytest.warns(prec.PrecWarning):
        trainer = fit(model, epochs=1)
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    resumed = prec.Trainer(accelerator="cpu", max_epochs=2, enable_progress_bar=False, logger=False)
    resumed.fit(Faulty(), loader(), ckpt_path=tmp_path / "a.ckpt")
    assert resumed.precision_plugin.skipped_steps == 2


# -- the loss scale ----------------------------------------------------------------------------------------------
def scaled_trainer(**policy) -> prec.Trainer:
    precision = MixedPrecision("16-mixed", "cpu", torch.float16, scaler=True)
    return prec.Trainer(
        accelerator="cpu",
        plugins=[precision],
        max_steps=174,
        enable_progress_bar=False,
        logger=False,
        nonfinite=NonFinitePolicy(**policy),
    )


def test_the_loss_scale_never_collapses_to_zero_and_weights_stay_finite() -> None:
    """170 overflowing steps used to halve the scale to exactly 0.0; the next finite step wrote NaN everywhere."""
    torch.manual_seed(0)
    model = Faulty("loss", bad=range(170))
    trainer = scaled_trainer(warn_after=50, raise_after=None)
    with pytest.warns(prec.PrecWarning, match=r"50 consecutive optimizer steps were skipped .* loss scale 1\.0"):
        trainer.fit(model, loader(50))
    precision = trainer.precision_plugin
    assert precision.scaler.get_scale() >= 1.0
    assert finite(model)
    assert precision.skipped_steps == 170
    assert not precision.step_skipped  # the last steps were applied


def test_the_default_alarm_stops_a_run_that_only_overflows() -> None:
    model = Faulty("loss", bad=range(1000))
    trainer = scaled_trainer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", prec.PrecWarning)
        with pytest.raises(prec.NonFiniteError, match=r"100 consecutive .* loss scale 1\.0.*layer\.weight"):
            trainer.fit(model, loader(50))
    assert finite(model)


def test_the_floor_is_an_option() -> None:
    precision = prec.get_precision("32-true", "cpu")
    assert precision.scaler is None
    with pytest.raises(prec.ConfigurationError, match="min_scale=0 must be a finite number > 0"):
        MixedPrecision("16-mixed", "cpu", torch.float16, scaler=True, min_scale=0)
    assert MixedPrecision("16-mixed", "cpu", torch.float16, scaler=True, min_scale=2.0**-8).min_scale == 2.0**-8


def test_a_bad_nonfinite_argument_is_a_configuration_error() -> None:
    with pytest.raises(prec.ConfigurationError, match="nonfinite='ignore' must be one of 'skip', 'raise', 'off'"):
        prec.Trainer(accelerator="cpu", nonfinite="ignore")
    with pytest.raises(prec.ConfigurationError, match=r"raise_after=2\) must be None or an int >= warn_after"):
        NonFinitePolicy(warn_after=5, raise_after=2)
