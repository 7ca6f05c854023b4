"""prec.training.summary against sizes computed by hand, for each precision."""

from __future__ import annotations

import pytest
import torch

import prec
from prec.precision import MixedPrecision
from prec.training.summary import summarize

pytestmark = pytest.mark.filterwarnings("ignore::prec.PerformanceWarning")

N = 10 * 4 + 4  # Linear(10, 4): weight and bias


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(10, 4))


@pytest.mark.parametrize(
    ("name", "options", "weight", "state", "extras"),
    [
        ("32-true", {}, 4, 8, {}),
        ("bf16-mixed", {}, 4, 8, {}),
        ("bf16-true", {}, 2, 4, {}),
        ("16-true", {}, 2, 4, {}),
        ("64-true", {}, 8, 16, {}),
        ("bf16-true", {"master_weights": "fp32"}, 2, 8, {"master weights (float32)": 4 * N}),
        ("16-true", {"master_weights": "fp32"}, 2, 8, {"master weights (float32)": 4 * N}),
        ("bf16-true", {"master_weights": "kahan"}, 2, 4, {"Kahan compensation (bfloat16)": 2 * N}),
        ("bf16-true", {"master_weights": "stochastic"}, 2, 4, {}),
    ],
)
def test_sizes_per_precision(name: str, options: dict, weight: int, state: int, extras: dict) -> None:
    precision = prec.get_precision(name, "cpu", **options)
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters())
    estimated = summarize(model, precision, optimizer)  # before conversion and before any step
    assert estimated.parameters == N and estimated.trainable == N
    assert estimated.weight_bytes == weight * N and estimated.gradient_bytes == weight * N
    assert estimated.optimizer_state_bytes == state * N and not estimated.optimizer_state_measured
    assert estimated.extras == extras
    assert estimated.total_bytes == (2 * weight + state) * N + sum(extras.values())

    precision.convert_module(model)
    optimizer = torch.optim.AdamW(model.parameters(), eps=1e-6)  # 16-true refuses an eps that is 0 in float16
    precision.setup_optimizer(optimizer)
    model(precision.convert_input(torch.randn(3, 10))).float().sum().backward()
    precision.optimizer_step(optimizer)
    measured = summarize(model, precision, optimizer)
    assert measured.optimizer_state_measured and measured.optimizer_state_bytes == state * N
    assert measured.weight_bytes == weight * N and measured.extras == extras
    assert f"Model summary under {name}" in str(measured)


def test_the_grad_scaler_and_the_module_policy_count() -> None:
    scaled = MixedPrecision("16-mixed", "cpu", torch.float16, scaler=True)
    assert summarize(_model(), scaled).extras == {"grad scaler": 8}
    precision = prec.get_precision("bf16-true", "cpu", keep_float32=["0"])
    summary = summarize(_model(), precision, torch.optim.SGD(_model().parameters(), lr=0.1, momentum=0.9))
    assert summary.parameters_by_dtype == {"float32": N} and summary.optimizer_state_bytes == 4 * N


def test_unknown_optimizers_are_unknown_not_guessed() -> None:
    class Custom(torch.optim.SGD):
        pass

    summary = summarize(_model(), prec.get_precision("32-true", "cpu"), Custom(_model().parameters(), lr=0.1))
    assert summary.optimizer_state_bytes is None and "unknown" in str(summary)


def test_frozen_parameters_have_no_gradients() -> None:
    model = _model()
    model[0].bias.requires_grad_(False)
    summary = summarize(model, prec.get_precision("bf16-true", "cpu"))
    assert summary.trainable == 40 and summary.gradient_bytes == 80 and summary.weight_bytes == 88
