"""The grad scaler of 16-mixed, run for real: torch's GradScaler works on CPU tensors, so every mechanism here
(skip on inf/NaN, back-off, growth, unscale before clipping, fused and legacy optimizers, state) is the same code
the GPU runs. Only the autocast device differs."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import prec
from prec.precision import MixedPrecision


def half_mixed(**options: Any) -> MixedPrecision:
    return MixedPrecision("16-mixed", "cpu", torch.float16, scaler=True, **options)


def model_and_data() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3), torch.randn(8, 4), torch.randn(8, 3)


def backward(precision: MixedPrecision, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    with precision.forward_context():
        out = model(x)
    precision.backward(torch.nn.functional.mse_loss(out.float(), y), model)


def true_gradients(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    return grads


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_invalid_step_is_skipped_and_the_scale_backs_off(bad: float) -> None:
    precision = half_mixed(init_scale=1024.0)
    model, x, y = model_and_data()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]

    backward(precision, model, x, y)
    model.weight.grad[0, 0] = bad
    precision.optimizer_step(optimizer)
    optimizer.zero_grad()
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert precision.step_skipped and precision.skipped_steps == 1
    assert precision.scaler.get_scale() == 512.0

    backward(precision, model, x, y)
    precision.optimizer_step(optimizer)
    assert not precision.step_skipped and precision.skipped_steps == 1
    assert not torch.equal(before[0], model.weight)
    assert precision.scaler.get_scale() == 512.0
    assert precision.metrics() == {"loss_scale": 512.0, "skipped_steps": 1.0}


def test_the_applied_step_equals_a_float32_step() -> None:
    """Unscaling is exact: the update is the one plain SGD makes from the true gradients."""
    precision = half_mixed(init_scale=2.0**10)
    model, x, y = model_and_data()
    reference = [p.detach() - 0.1 * g for p, g in zip(model.parameters(), true_gradients(model, x, y), strict=True)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    backward(precision, model, x, y)
    precision.optimizer_step(optimizer)
    for expected, param in zip(reference, model.parameters(), strict=True):
        torch.testing.assert_close(param.detach(), expected, rtol=1e-2, atol=1e-3)  # fp16 autocast of the forward


def test_scale_grows_after_growth_interval_good_steps() -> None:
    precision = half_mixed(init_scale=8.0, growth_interval=2, growth_factor=4.0)
    model, x, y = model_and_data()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scales = []
    for _ in range(4):
        backward(precision, model, x, y)
        precision.optimizer_step(optimizer)
        optimizer.zero_grad()
        scales.append(precision.scaler.get_scale())
    assert scales == [8.0, 32.0, 32.0, 128.0]


def test_clipping_sees_true_gradients_and_unscaling_twice_is_safe() -> None:
    precision = half_mixed(init_scale=2.0**12)
    model, x, y = model_and_data()
    expected_norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in true_gradients(model, x, y)]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    backward(precision, model, x, y)
    precision.unscale_gradients(optimizer)
    norm = precision.clip_gradients(optimizer, 1e9)  # unscales again: must be a no-op
    torch.testing.assert_close(norm, expected_norm, rtol=1e-2, atol=0)
    clipped = precision.clip_gradients(optimizer, 0.01)
    torch.testing.assert_close(clipped, norm)
    after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert after <= 0.0101
    precision.optimizer_step(optimizer)
    assert not precision.step_skipped


@pytest.mark.parametrize("make", [torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW])
def test_fused_optimizers_clip_and_skip(make: Any) -> None:
    precision = half_mixed(init_scale=256.0)
    model, x, y = model_and_data()
    optimizer = make(model.parameters(), lr=0.01, fused=True)
    before = model.weight.detach().clone()
    backward(precision, model, x, y)
    model.bias.grad[0] = float("inf")
    precision.clip_gradients(optimizer, 1.0)
    precision.optimizer_step(optimizer)
    optimizer.zero_grad()
    assert precision.step_skipped and precision.skipped_steps == 1 and torch.equal(before, model.weight)
    assert precision.scaler.get_scale() == 128.0
    backward(precision, model, x, y)
    precision.clip_gradients(optimizer, 1.0)
    precision.optimizer_step(optimizer)
    assert not precision.step_skipped and not torch.equal(before, model.weight)


class LegacyScalingSGD(torch.optim.Optimizer):
    """Simulates a third-party optimizer on the legacy protocol: it takes the scaler into step() and unscales
    there itself."""

    _step_supports_amp_scaling = True

    def __init__(self, params: Any, lr: float = 0.1) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: Any = None, grad_scaler: torch.amp.GradScaler | None = None) -> None:  # type: ignore[override]
        if grad_scaler is not None:
            grad_scaler.unscale_(self)
            if sum(v.item() for v in grad_scaler._found_inf_per_device(self).values()):
                return
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    param.add_(param.grad, alpha=-group["lr"])


def test_legacy_optimizer_cannot_be_clipped_but_steps() -> None:
    precision = half_mixed()
    model, x, y = model_and_data()
    optimizer = LegacyScalingSGD(model.parameters())
    backward(precision, model, x, y)
    with pytest.raises(prec.ConfigurationError, match=r"unscales its gradients inside step\(grad_scaler=...\)"):
        precision.clip_gradients(optimizer, 1.0)
    before = model.weight.detach().clone()
    with pytest.warns(FutureWarning, match="GradScaler is going to stop passing itself"):
        precision.optimizer_step(optimizer)
    assert not precision.step_skipped and not torch.equal(before, model.weight)


def test_lbfgs_is_refused() -> None:
    precision = half_mixed()
    model, _, _ = model_and_data()
    optimizer = torch.optim.LBFGS(model.parameters())
    with pytest.raises(prec.ConfigurationError, match="LBFGS re-evaluates the loss"):
        precision.setup_optimizer(optimizer)
    with pytest.raises(prec.ConfigurationError, match="LBFGS"):
        precision.optimizer_step(optimizer, lambda: 0.0)
    MixedPrecision("bf16-mixed", "cpu", torch.bfloat16).setup_optimizer(optimizer)  # no scaler: fine


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_weights_are_refused_at_setup(dtype: torch.dtype) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2).to(dtype))
    with pytest.raises(prec.ConfigurationError, match="Attempting to unscale FP16 gradients.*'16-true'"):
        half_mixed().setup_module(model)


def test_frozen_half_weights_are_fine() -> None:
    frozen = torch.nn.Linear(4, 4).half().requires_grad_(False)
    half_mixed().setup_module(torch.nn.Sequential(frozen, torch.nn.Linear(4, 2)))


def test_two_optimizers_one_update() -> None:
    """Several optimizers from one backward: each steps or skips on its own gradients, the scale updates once,
    and step_skipped says whether any step of the iteration was skipped."""
    precision = half_mixed(init_scale=64.0)
    torch.manual_seed(0)
    first, second = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)
    opt_first = torch.optim.SGD(first.parameters(), lr=0.1)
    opt_second = torch.optim.SGD(second.parameters(), lr=0.1)
    before_first, before_second = first.weight.detach().clone(), second.weight.detach().clone()
    with precision.forward_context():
        out = second(first(torch.randn(8, 4)))
    precision.backward(out.float().pow(2).mean())
    first.weight.grad[0, 0] = float("nan")
    precision.optimizer_step(opt_first, update=False)
    precision.optimizer_step(opt_second, update=False)
    precision.update_scaler()
    assert torch.equal(before_first, first.weight) and not torch.equal(before_second, second.weight)
    assert precision.step_skipped and precision.skipped_steps == 1
    assert precision.scaler.get_scale() == 32.0


def test_an_optimizer_without_gradients_steps_plainly() -> None:
    precision = half_mixed()
    model, x, y = model_and_data()
    unused = torch.nn.Linear(2, 2)
    opt_used = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_unused = torch.optim.SGD(unused.parameters(), lr=0.1)
    backward(precision, model, x, y)
    precision.unscale_gradients(opt_unused)
    precision.optimizer_step(opt_unused, update=False)
    precision.optimizer_step(opt_used, update=False)
    precision.update_scaler()
    assert not precision.step_skipped and precision.skipped_steps == 0
    precision.optimizer_step(opt_unused)  # alone in an iteration: no scaler update, no torch assertion


def test_closure_runs_before_the_scaled_step() -> None:
    precision = half_mixed()
    model, x, y = model_and_data()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.weight.detach().clone()

    def closure() -> torch.Tensor:
        backward(precision, model, x, y)
        return torch.tensor(3.0)

    assert precision.optimizer_step(optimizer, closure).item() == 3.0
    assert not torch.equal(before, model.weight)


def test_state_round_trip() -> None:
    precision = half_mixed(init_scale=1024.0, growth_interval=5)
    model, x, y = model_and_data()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for bad in (True, False, False):
        backward(precision, model, x, y)
        if bad:
            model.weight.grad.fill_(float("inf"))
        precision.optimizer_step(optimizer)
        optimizer.zero_grad()
    state = precision.state_dict()
    assert state["skipped_steps"] == 1 and state["scaler"]["scale"] == 512.0
    assert state["scaler"]["_growth_tracker"] == 2 and state["scaler"]["growth_interval"] == 5

    resumed = half_mixed()
    resumed.load_state_dict(state)
    assert resumed.skipped_steps == 1 and resumed.scaler.get_scale() == 512.0
    assert resumed.scaler.get_growth_interval() == 5
    for _ in range(3):  # two more good steps reach growth_interval=5 together with the two before
        backward(resumed, model, x, y)
        resumed.optimizer_step(optimizer)
        optimizer.zero_grad()
    assert resumed.scaler.get_scale() == 1024.0


def test_teardown_after_a_half_done_iteration() -> None:
    """A run that failed between unscale and step must not poison the next run with the same precision."""
    precision = half_mixed()
    model, x, y = model_and_data()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    backward(precision, model, x, y)
    precision.unscale_gradients(optimizer)
    precision.teardown()
    optimizer.zero_grad()
    backward(precision, model, x, y)
    precision.clip_gradients(optimizer, 1.0)
    precision.optimizer_step(optimizer)
    assert not precision.step_skipped


def test_without_scaler_nothing_is_skipped_or_logged() -> None:
    precision = MixedPrecision("bf16-mixed", "cpu", torch.bfloat16)
    model, x, y = model_and_data()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    backward(precision, model, x, y)
    precision.optimizer_step(optimizer)
    assert not precision.step_skipped and precision.skipped_steps == 0
    assert precision.metrics() == {} and precision.state_dict() == {}
