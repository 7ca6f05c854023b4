from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from _modules import load_module

import prec
from prec.numerics import FORMATS, MIN_COSINE, DriftReport, LayerDrift, gradient_drift, judge

models = load_module(Path(__file__).with_name("models.py"), "_prec_numerics_models")


class Coarse(torch.nn.Module):
    """Three Linear layers; ``middle``'s input is small (~1e-3) and, when ``coarse`` is set, rounded to e4m3 without
    scaling, which flushes most of it to zero or to a subnormal step of 2**-9."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first = torch.nn.Linear(8, 32)
        self.middle = torch.nn.Linear(32, 32)
        self.last = torch.nn.Linear(32, 4)
        self.coarse = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.first(x)) * 1e-3
        if self.coarse:
            h = FORMATS["e4m3"].unscaled().round(h)
        return self.last(torch.relu(self.middle(h) * 1e3))


def test_the_layer_fed_a_coarse_format_is_named() -> None:
    model = Coarse()
    batch = models.batch(8, 4, size=32)
    model.coarse = True
    loss = models.mse(model, batch)
    loss.backward()
    model.coarse = False  # the reference: the same weights, the exact input
    report = gradient_drift(model, batch, models.mse, low_loss=loss)
    assert report.parameters["middle.weight"].cosine < MIN_COSINE
    assert report.parameters["middle.bias"].cosine > 0.999  # its large gradient alone would hide the drift
    assert report.worst_cosine("first") > 0.999 and report.worst_cosine("last") > MIN_COSINE
    verdict = judge(report)
    assert not verdict.ok and [name for name, _ in verdict.drifted] == ["middle"]
    assert "middle: gradient cosine" in verdict.summary()


def test_bf16_gradients_do_not_drift_and_float64_is_a_reference_too() -> None:
    model = models.WithNorms()
    batch = models.batch(16, 4)
    low = models.WithNorms().to(torch.bfloat16)
    loss = models.mse(low, (batch[0].bfloat16(), batch[1]))
    loss.backward()
    grads = {name: param.grad for name, param in low.named_parameters()}
    report = gradient_drift(model, batch, models.mse, grads, torch.float64, low_loss=loss)
    assert all(layer.cosine > 0.999 for layer in report.layers.values()), report.layers
    assert all(layer.relative_error < 0.05 for layer in report.layers.values())
    assert judge(report).ok and report.loss_gap < 0.01
    assert all(param.grad is None for param in model.parameters())  # the model itself is left alone


def test_a_growing_loss_gap_is_called_out() -> None:
    def report(low: float) -> DriftReport:
        return DriftReport({"a": LayerDrift("a", 0.0, 1.0)}, reference_loss=1.0, low_loss=low)

    assert judge([report(1.001), report(1.002), report(1.003)]).loss_gap_growing
    assert not judge([report(1.001), report(1.003), report(1.002)]).loss_gap_growing
    verdict = judge(report(1.5))
    assert verdict.loss_gap_growing and "loss gap 50.000% > 1.000%" in verdict.summary()
    with pytest.raises(prec.ConfigurationError, match="at least one"):
        judge([])


def test_a_wrapped_forward_still_runs_on_the_copy() -> None:
    """A forward replaced on the instance by a wrapper of the bound method (as prec's keep_float32 wraps kept
    modules) would run the original after a deep copy; the reference copy must not touch the original."""
    model = models.WithNorms()
    model.norm.forward = functools.wraps(model.norm.forward)(lambda *a, f=model.norm.forward: f(*a))
    batch = models.batch(16, 4)
    models.mse(model, batch).backward()
    grads = {name: param.grad.clone() for name, param in model.named_parameters()}
    report = gradient_drift(model, batch, models.mse)
    assert all(torch.equal(param.grad, grads[name]) for name, param in model.named_parameters())
    assert all(layer.cosine > 0.9999 for layer in report.layers.values())


def test_bad_input_is_refused() -> None:
    model = models.WithNorms()
    with pytest.raises(prec.ConfigurationError, match="no gradient"):
        gradient_drift(model, models.batch(16, 4), models.mse)
    with pytest.raises(prec.ConfigurationError, match="reference_dtype"):
        gradient_drift(model, models.batch(16, 4), models.mse, {"x": torch.zeros(1)}, torch.bfloat16)
    with pytest.raises(prec.ConfigurationError, match="'x' is not a parameter"):
        gradient_drift(model, models.batch(16, 4), models.mse, {"x": torch.zeros(1)})
