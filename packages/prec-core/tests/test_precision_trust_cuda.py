"""On a real GPU: the non-finite guard synchronises with the host no more often than torch's GradScaler does with a
non-fused optimizer (once per step), and not per step at all with a fused one, which skips on the device.
Synchronisations are counted with ``torch.cuda.set_sync_debug_mode("warn")`` (one warning per synchronising call).
Skipped without a GPU."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch

import prec

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

STEPS = 40


def count_syncs(step: Callable[[], None]) -> int:
    """Synchronising CUDA calls made by ``STEPS`` calls of ``step`` (after one warm-up call)."""
    step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(STEPS):
                step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def training(fused: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 64).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused)
    return model, optimizer, torch.randn(16, 64, device="cuda")


def guarded_loop(fused: bool, nonfinite: str) -> Callable[[], None]:
    """A loop of your own through the Precision API (32-true), the guard on or off."""
    model, optimizer, x = training(fused)
    precision = prec.Precision()
    precision.set_nonfinite_policy(nonfinite)
    precision.setup_module(model)

    def step() -> None:
        precision.backward(model(x).square().mean(), model)
        precision.optimizer_step(optimizer)
        optimizer.zero_grad()

    return step


def grad_scaler_loop(fused: bool) -> Callable[[], None]:
    """torch's own recipe: GradScaler (scale 1, so nothing is skipped) around the same step."""
    model, optimizer, x = training(fused)
    scaler = torch.amp.GradScaler("cuda", init_scale=1.0, growth_interval=10**6)

    def step() -> None:
        scaler.scale(model(x).square().mean()).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()

    return step


def test_with_a_non_fused_optimizer_the_guard_syncs_no_more_than_torchs_grad_scaler() -> None:
    unguarded = count_syncs(guarded_loop(False, "off"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", prec.PerformanceWarning)  # said once: one flag read per step
        guarded = count_syncs(guarded_loop(False, "skip"))
    scaler = count_syncs(grad_scaler_loop(False))
    assert guarded - unguarded <= STEPS, f"{guarded - unguarded} syncs added over {STEPS} steps"
    assert guarded - unguarded <= scaler, f"guard {guarded - unguarded}, GradScaler {scaler}"


def test_with_a_fused_optimizer_the_guard_adds_no_sync_per_step() -> None:
    unguarded = count_syncs(guarded_loop(True, "off"))
    guarded = count_syncs(guarded_loop(True, "skip"))
    lazy_reads = STEPS // prec.NonFinitePolicy().warn_after + 1  # the skip count is read every warn_after steps
    assert guarded - unguarded <= lazy_reads, f"{guarded - unguarded} syncs added over {STEPS} steps"


def test_a_fused_optimizer_skips_a_nonfinite_step_on_the_device() -> None:
    model, optimizer, x = training(True)
    precision = prec.Precision()
    precision.setup_module(model)
    before = [p.detach().clone() for p in model.parameters()]
    precision.backward(model(x).square().mean() * float("inf"), model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", prec.PrecWarning)  # reported at the next lazy read of the flags
        precision.optimizer_step(optimizer)
        assert precision.skipped_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
