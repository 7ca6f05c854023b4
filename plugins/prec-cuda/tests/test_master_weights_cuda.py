"""On a real GPU: bf16-true's ``master_weights`` keep small updates with torch's CUDA optimizers (fused included),
and a step the non-finite guard skips on the device leaves weights and state untouched (run by gpu_check.sh;
skipped without a GPU)."""

from __future__ import annotations

import warnings

import pytest
import torch

import prec

pytestmark = pytest.mark.cuda
MODES = ("fp32", "kahan", "stochastic")


def _moved(precision: prec.Precision, fused: bool) -> float:
    """AdamW, lr 1e-4, 100 steps on weights of 1.0 with unit gradients: mean movement of the effective weights."""
    model = precision.convert_module(torch.nn.Linear(256, 256, bias=False).cuda())
    with torch.no_grad():
        model.weight.fill_(1.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
    precision.setup_optimizer(optimizer)
    sync = getattr(precision, "sync_from_model", None)
    if sync is not None:
        sync()
    for _ in range(100):
        model.weight.grad = torch.ones_like(model.weight)
        precision.optimizer_step(optimizer)
        optimizer.zero_grad()
    effective = getattr(precision, "effective_weight", None)
    weight = effective(model.weight) if effective is not None else model.weight.detach().float()
    return float((1.0 - weight).mean())


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_updates_are_kept_on_cuda(mode: str, fused: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", prec.PerformanceWarning)
        reference = _moved(prec.get_precision("32-true", "cuda"), fused)
        kept = _moved(prec.get_precision("bf16-true", "cuda", master_weights=mode), fused) / reference
    assert 0.99 <= kept <= 1.01


@pytest.mark.parametrize("mode", MODES)
def test_a_skipped_step_changes_nothing_with_a_fused_optimizer(mode: str) -> None:
    precision = prec.get_precision("bf16-true", "cuda", master_weights=mode)
    model = precision.convert_module(torch.nn.Linear(64, 64).cuda())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    precision.setup_optimizer(optimizer)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    precision.optimizer_step(optimizer)
    before = [p.detach().clone() for p in model.parameters()]
    state = [{k: v.clone() for k, v in s.items()} for s in optimizer.state.values()]
    for p in model.parameters():
        p.grad = torch.full_like(p, float("nan"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        precision.optimizer_step(optimizer)
    assert bool(precision.step_skipped)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    after = list(optimizer.state.values())
    assert all(torch.equal(v, s[k]) for old, s in zip(state, after, strict=True) for k, v in old.items())
