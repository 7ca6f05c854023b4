"""bf16-true's cheap master_weights modes with quantized optimizer state (torchao's and bitsandbytes' 8-bit and
4-bit AdamW): the state stays in its own format, the weights are stepped in float32 and rounded back."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest
import torch

import prec

pytestmark = pytest.mark.filterwarnings("ignore::prec.PerformanceWarning")
MODES = ["fp32", "kahan", "stochastic"]


def _torchao(name: str) -> Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer]:
    optim = pytest.importorskip("torchao.optim")
    options: dict[str, Any] = {"block_size": 128} if name == "AdamW4bit" else {}
    return lambda params: getattr(optim, name)(params, lr=1e-3, **options)


def _bitsandbytes(name: str) -> Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer]:
    bnb = pytest.importorskip("bitsandbytes")
    return lambda params: getattr(bnb.optim, name)(params, lr=1e-3, min_8bit_size=0)


OPTIMIZERS = {
    "torchao.AdamW8bit": lambda: _torchao("AdamW8bit"),
    "torchao.AdamW4bit": lambda: _torchao("AdamW4bit"),
    "bitsandbytes.AdamW8bit": lambda: _bitsandbytes("AdamW8bit"),
    "bitsandbytes.PagedAdamW8bit": lambda: _bitsandbytes("PagedAdamW8bit"),
}


def _train(mode: str | None, make: Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer]) -> dict[str, Any]:
    torch.manual_seed(0)
    options = {} if mode is None else {"master_weights": mode}
    precision = prec.get_precision("bf16-true", "cpu", **options)
    model = torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.Tanh(), torch.nn.Linear(128, 1))
    precision.convert_module(model)
    optimizer = make(model.parameters())
    precision.setup_optimizer(optimizer)
    x = torch.randn(256, 128, generator=torch.Generator().manual_seed(1))
    y = x[:, :1].sin()
    losses = []
    for _ in range(25):
        loss = torch.nn.functional.mse_loss(precision.convert_output(model(precision.convert_input(x))), y)
        precision.backward(loss, model)
        precision.optimizer_step(optimizer)
        optimizer.zero_grad()
        losses.append(loss.item())
    return {"losses": losses, "model": model, "optimizer": optimizer}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_quantized_optimizer_state_trains_in_every_mode(name: str, mode: str) -> None:
    make = OPTIMIZERS[name]()
    plain = _train(None, make)
    run = _train(mode, make)
    assert run["losses"][-1] < 0.5 * run["losses"][0]  # it trains
    assert run["losses"][-1] == pytest.approx(plain["losses"][-1], rel=0.1)  # as the quantized optimizer does
    assert all(p.dtype == torch.bfloat16 for p in run["model"].parameters())
    params = [p for group in run["optimizer"].param_groups for p in group["params"]]
    if mode != "fp32":
        assert params == list(run["model"].parameters())  # the working copies are gone
    # Still quantized as the plain optimizer keeps it: nothing was upcast or rounded into bfloat16.
    assert _state_kinds(run["optimizer"]) == _state_kinds(plain["optimizer"])
    assert any("OptimState" in kind or kind == "uint8" for _, kind in _state_kinds(run["optimizer"]))


def _state_kinds(optimizer: torch.optim.Optimizer) -> list[tuple[str, str]]:
    """(key, kind) of every elementwise state tensor: its class if a subclass, else its dtype if not floating."""
    kinds = []
    for state in optimizer.state.values():
        for key, value in state.items():
            if not isinstance(value, torch.Tensor) or value.numel() <= 1:
                continue
            if type(value) is not torch.Tensor:
                kinds.append((key, type(value).__name__))
            else:
                kind = "floating" if value.is_floating_point() else str(value.dtype).removeprefix("torch.")
                kinds.append((key, kind))
    return sorted(kinds)


def test_low_bit_state_and_stochastic_weights_cost_about_6_bytes_per_parameter() -> None:
    run = _train("stochastic", OPTIMIZERS["torchao.AdamW8bit"]())
    parameters = sum(p.numel() for p in run["model"].parameters())
    state = sum(_stored_bytes(v) for s in run["optimizer"].state.values() for v in s.values())
    per_parameter = (2 * parameters + 2 * parameters + state) / parameters  # weights + gradients + state
    assert 6.0 <= per_parameter < 6.2


def _stored_bytes(value: Any) -> int:
    """Bytes a state tensor holds: a tensor subclass (quantized state) counts its inner tensors."""
    if not isinstance(value, torch.Tensor):
        return 0
    if hasattr(value, "__tensor_flatten__"):
        names, _ = value.__tensor_flatten__()
        return sum(_stored_bytes(getattr(value, name)) for name in names)
    return value.numel() * value.element_size()
