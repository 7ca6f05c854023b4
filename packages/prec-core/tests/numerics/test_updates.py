from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _modules import load_module

import prec
from prec.numerics import NumericsRecorder, intended_updates, lost_update_ratio

models = load_module(Path(__file__).with_name("models.py"), "_prec_numerics_models")


def _ratios(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step, effective_weight=None) -> dict:
    recorder = NumericsRecorder(model, formats=["bf16"], kinds=("updates",), effective_weight=effective_weight)
    x, y = models.batch(16, 4, seed=2)
    result = {}
    for _ in range(3):
        model.zero_grad(set_to_none=True)
        recorder.start()
        models.mse(model, (x.to(next(model.parameters()).dtype), y)).backward()
        recorder.before_optimizer_step(optimizer)
        step()
        recorder.after_optimizer_step()
        result = recorder.stop().scalars()
    return result


def test_bf16_adamw_at_lr_1e_4_does_not_move_the_norm_gains() -> None:
    model = models.WithNorms().to(torch.bfloat16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ratios = _ratios(model, optimizer, optimizer.step)
    assert ratios["numerics/norm/weight/lost_update"] > 0.99  # 1e-4 is far below half of bf16's 2**-7 at 1.0
    assert ratios["numerics/norm/bias/lost_update"] < 0.2  # near zero bf16 is fine-grained: the bias moves
    assert ratios["numerics/norm/weights/lost_update"] > 0.3


def test_float32_weights_lose_nothing() -> None:
    model = models.WithNorms()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ratios = _ratios(model, optimizer, optimizer.step)
    lost = {key: value for key, value in ratios.items() if key.endswith("lost_update")}
    assert lost and all(abs(value) < 1e-4 for value in lost.values()), lost


class Float32Copies:
    """A hand-made master-weights step: the optimizer steps float32 copies swapped into the bf16 parameters, which
    then get the copies rounded; what a parameter is worth is its float32 copy."""

    def __init__(self, model: torch.nn.Module, lr: float) -> None:
        self.params = list(model.parameters())
        self.copies = {param: param.detach().float().clone() for param in self.params}
        self.optimizer = torch.optim.AdamW(self.params, lr=lr)

    def step(self) -> None:
        low = {}
        for param in self.params:
            low[param] = param.data
            param.data = self.copies[param]
            param.grad = param.grad.float()
        self.optimizer.step()
        for param in self.params:
            self.copies[param] = param.data
            param.data = self.copies[param].to(low[param].dtype)
            param.grad = None

    def effective_weight(self, param: torch.Tensor) -> torch.Tensor:
        return self.copies[param]


def test_an_effective_weight_that_keeps_float32_copies_loses_nothing() -> None:
    model = models.WithNorms().to(torch.bfloat16)
    masters = Float32Copies(model, lr=1e-4)
    ratios = _ratios(model, masters.optimizer, masters.step, effective_weight=masters.effective_weight)
    assert abs(ratios["numerics/norm/weight/lost_update"]) < 1e-3
    assert abs(ratios["numerics/inp/weights/lost_update"]) < 1e-3


def test_intended_updates_leave_the_real_optimizer_alone() -> None:
    layer = torch.nn.Linear(4, 4)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1, betas=(0.8, 0.9))
    layer(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    state = {key: value.clone() for key, value in optimizer.state[layer.weight].items()}
    weight = layer.weight.detach().clone()
    intended = intended_updates(optimizer)
    assert set(intended) == {layer.weight, layer.bias}
    assert torch.equal(layer.weight, weight)
    assert all(torch.equal(optimizer.state[layer.weight][key], value) for key, value in state.items())
    optimizer.step()  # the same update the copy computed
    assert torch.allclose(layer.weight - weight, intended[layer.weight], atol=1e-7)


def test_the_ratio_is_a_projection() -> None:
    assert lost_update_ratio((0.0, 4.0)) == 1.0
    assert lost_update_ratio((4.0, 4.0)) == 0.0
    assert lost_update_ratio((0.0, 0.0)) == 0.0  # nothing intended, nothing lost
    assert lost_update_ratio(torch.tensor([1.0, 4.0])) == pytest.approx(0.75)


def _with_precision(master_weights: str | None) -> dict:
    """Three AdamW steps at lr 1e-4 through prec's own bf16-true on the CPU, measured with its effective_weight."""
    torch.manual_seed(0)
    options = {} if master_weights is None else {"master_weights": master_weights}
    precision = prec.get_precision("bf16-true", accelerator="cpu", **options)
    model = precision.convert_module(torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.LayerNorm(64)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    precision.setup_optimizer(optimizer)
    effective_weight = getattr(precision, "effective_weight", None)
    recorder = NumericsRecorder(model, kinds=("updates",), effective_weight=effective_weight)
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(3))
    scalars = {}
    for _ in range(3):
        recorder.start()
        with precision.forward_context():
            loss = model(precision.convert_input(x)).float().square().mean()
        precision.backward(loss, model)
        recorder.before_optimizer_step(optimizer)
        precision.optimizer_step(optimizer)
        recorder.after_optimizer_step()
        optimizer.zero_grad()
        scalars = recorder.stop().scalars()
    return scalars


@pytest.mark.filterwarnings("ignore::prec.PerformanceWarning")
def test_prec_master_weights_keep_the_update_that_plain_bf16_true_loses() -> None:
    plain = _with_precision(None)
    assert plain["numerics/1/weight/lost_update"] > 0.99 and plain["numerics/0/weight/lost_update"] > 0.5
    kahan = _with_precision("kahan")
    assert abs(kahan["numerics/1/weight/lost_update"]) < 0.01 and abs(kahan["numerics/0/weights/lost_update"]) < 0.01
    # Stochastic rounding moves a weight by a whole bf16 step or not at all; the projection averages that out over
    # the 4096 weights of the Linear (its spread there is a few percent).
    stochastic = _with_precision("stochastic")
    assert abs(stochastic["numerics/0/weight/lost_update"]) < 0.25


def test_an_optimizer_that_needs_a_closure_is_refused_clearly() -> None:
    layer = torch.nn.Linear(2, 2)
    layer(torch.randn(1, 2)).sum().backward()
    with pytest.raises(prec.ConfigurationError, match="LBFGS.*closure"):
        intended_updates(torch.optim.LBFGS(layer.parameters()))
