"""Why 64-true exists: an ill-conditioned least-squares fit that float32 cannot solve and float64 can.

A straight line ``y = a + b t`` fitted to samples with ``t`` in [100, 101]: the columns ``1`` and ``t`` of the
design matrix are nearly parallel (condition number about 3e4, squared for the normal equations the gradients
follow), so float32's rounding of the residuals swamps the gradient. The data are float32, as a dataset usually
is; the reference is the closed-form float64 least-squares solution for those same float32 values.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import prec

OFFSET = 100.0


def make_data(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float32 samples and the float64 closed-form (intercept, slope) for exactly those samples."""
    generator = torch.Generator().manual_seed(seed)
    t = (OFFSET + torch.linspace(0, 1, 64, dtype=torch.float64)).float()
    noise = 0.01 * torch.randn(64, dtype=torch.float64, generator=generator)
    y = (3.0 - 0.5 * t.double() + noise).float()
    design = torch.stack([torch.ones(64, dtype=torch.float64), t.double()], dim=1)
    solution = torch.linalg.lstsq(design, y.double()[:, None]).solution.squeeze(1)
    return t[:, None], y[:, None], solution


def make_lbfgs(parameters: Any) -> torch.optim.LBFGS:
    return torch.optim.LBFGS(
        parameters, lr=1, max_iter=100, history_size=10, tolerance_grad=0, tolerance_change=0,
        line_search_fn="strong_wolfe",
    )  # fmt: skip


def relative_error(line: torch.nn.Linear, solution: torch.Tensor) -> float:
    found = torch.stack([line.bias.detach().double()[0], line.weight.detach().double()[0, 0]])
    return float((found - solution).norm() / solution.norm())


class LineFit(prec.TrainingModule):
    """Least squares with LBFGS through manual optimization (LBFGS re-evaluates the loss in its closure)."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.line = torch.nn.Linear(1, 1)
        torch.nn.init.zeros_(self.line.weight)
        torch.nn.init.zeros_(self.line.bias)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        t, y = batch
        optimizer = self.optimizers()

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(self.line(t), y)
            self.manual_backward(loss)
            return loss

        self.log("loss", optimizer.step(closure))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return make_lbfgs(self.parameters())


def fit_with_trainer(precision: str, seed: int) -> float:
    t, y, solution = make_data(seed)
    model = LineFit()
    loader = DataLoader(TensorDataset(t, y), batch_size=len(t))
    prec.Trainer(accelerator="cpu", precision=precision, max_epochs=3, enable_progress_bar=False).fit(model, loader)
    return relative_error(model.line, solution)


@pytest.mark.parametrize("seed", [0, 1])
def test_64_true_solves_what_32_true_cannot(seed: int) -> None:
    single = fit_with_trainer("32-true", seed)
    double = fit_with_trainer("64-true", seed)
    assert double < 1e-6, f"64-true relative error {double:.2e}"
    assert single > 1e-2, f"32-true relative error {single:.2e}"
    assert single / double > 1e4


def fit_in_own_loop(precision_name: str) -> float:
    """The same fit with the precision plugin in a hand-written loop, no Trainer."""
    t, y, solution = make_data(seed=2)
    precision = prec.get_precision(precision_name, accelerator="cpu")
    line = torch.nn.Linear(1, 1)
    torch.nn.init.zeros_(line.weight)
    torch.nn.init.zeros_(line.bias)
    line = precision.convert_module(line)
    optimizer = make_lbfgs(line.parameters())
    t, y = precision.convert_input((t, y))

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        with precision.forward_context():
            loss = torch.nn.functional.mse_loss(line(t), y)
        precision.backward(loss, line)
        return loss

    for _ in range(3):
        precision.optimizer_step(optimizer, closure)
    return relative_error(line, solution)


def test_64_true_in_a_plain_loop() -> None:
    double = fit_in_own_loop("64-true")
    single = fit_in_own_loop("32-true")
    assert double < 1e-6 < 1e-2 < single
