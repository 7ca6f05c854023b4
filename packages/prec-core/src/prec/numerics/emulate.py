"""One layer at a time in a target format: capture its calls in a float32 run, replay them rounded, compare.

:class:`CallCapture` records, for chosen modules, the inputs of every call and the gradient that reached its
output. :func:`layer_errors` replays one call twice, on copies of the module:

* the *reference*: the module in float32 (float64 when the candidate itself is fp32), inputs as captured;
* the *emulation*: the module's parameters and buffers and its floating inputs rounded to the format (per tensor
  scaled for fp8, :meth:`Format.round`), computed in float32 as a tensor core accumulates, the output rounded to
  the format for the 16-bit formats (autocast returns them in 16 bit; fp8 matmuls return a wider type).

and returns the relative errors ``||emulated - reference|| / ||reference||`` of the output and of the input
gradient (the backward fed with the captured output gradient, rounded to the format as well). Each format is
emulated alone: inputs, weights and output gradient all in that format. A precision that mixes formats (fp8:
e4m3 forward, e5m2 backward) reads the forward error of one and the backward error of the other.
Randomness (dropout) is replayed with the same seed in both runs.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from prec.numerics.formats import Format
from prec.numerics.recorder import first_float_tensor

__all__ = ["Call", "CallCapture", "layer_errors", "matmul_size", "relative_error"]


@dataclass
class Call:
    """One call of a module: its inputs (detached copies) and the gradient of its output (once backward ran)."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    grad_output: Tensor | None = field(default=None)


def _detach(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_detach(item) for item in value)
    if isinstance(value, dict):
        return {key: _detach(item) for key, item in value.items()}
    return value


class CallCapture:
    """Records the calls of ``modules`` while active (``with capture.active(): ...``); hooks removed on exit."""

    def __init__(self, modules: Mapping[str, torch.nn.Module]) -> None:
        self.modules = dict(modules)
        self.calls: dict[str, list[Call]] = {name: [] for name in self.modules}

    @contextmanager
    def active(self) -> Iterator[None]:
        handles: list[RemovableHandle] = []
        for name, module in self.modules.items():
            handles.append(module.register_forward_hook(self._hook(name, handles), with_kwargs=True))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def clear(self) -> None:
        self.calls = {name: [] for name in self.modules}

    def _hook(self, name: str, handles: list[RemovableHandle]) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            call = Call(_detach(args), _detach(kwargs))
            self.calls[name].append(call)
            tensor = first_float_tensor(output)
            if tensor is not None and tensor.requires_grad:

                def keep(grad: Tensor) -> None:
                    call.grad_output = grad.detach().clone()

                handles.append(tensor.register_hook(keep))

        return hook


def relative_error(value: Tensor, reference: Tensor) -> float:
    """``||value - reference|| / ||reference||`` in float64; inf when ``value`` is not finite."""
    value, reference = value.detach().double(), reference.detach().double()
    if not bool(torch.isfinite(value).all()):
        return math.inf
    norm = float(torch.linalg.vector_norm(reference))
    error = float(torch.linalg.vector_norm(value - reference))
    if norm == 0.0:
        return 0.0 if error == 0.0 else math.inf
    return error / norm


def matmul_size(module: torch.nn.Module) -> int:
    """in x out features of the module's matmuls (0 for a module without one: norms, embeddings)."""
    if isinstance(module, torch.nn.Linear):
        return module.in_features * module.out_features
    if isinstance(module, torch.nn.MultiheadAttention):
        return sum(p.numel() for name, p in module.named_parameters() if name.endswith("weight") and p.dim() == 2)
    if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)) or isinstance(
        module, (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
    ):
        return module.weight.numel()
    return 0


def _cast(value: Any, dtype: torch.dtype, rounding: Callable[[Tensor], Tensor] | None) -> Any:
    if isinstance(value, Tensor) and value.is_floating_point():
        cast = value.to(dtype)
        return rounding(cast) if rounding is not None else cast
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(item, dtype, rounding) for item in value)
    if isinstance(value, dict):
        return {key: _cast(item, dtype, rounding) for key, item in value.items()}
    return value


def _leaves(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value] if value.is_floating_point() else []
    if isinstance(value, (tuple, list)):
        return [leaf for item in value for leaf in _leaves(item)]
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    return []


def _prepare(module: torch.nn.Module, dtype: torch.dtype, fmt: Format | None) -> torch.nn.Module:
    copied = copy.deepcopy(module).to(dtype)
    if fmt is not None:
        with torch.no_grad():
            for tensor in [*copied.parameters(), *copied.buffers()]:
                if tensor.is_floating_point():
                    tensor.copy_(fmt.round(tensor))
    return copied


def _replay(
    module: torch.nn.Module, call: Call, dtype: torch.dtype, fmt: Format | None, seed_device: torch.device
) -> tuple[Tensor | None, Tensor | None]:
    """Output and input gradients of one call of ``module`` (a prepared copy) at ``dtype``, rounded by ``fmt``."""
    rounding = fmt.round if fmt is not None else None
    args, kwargs = _cast(call.args, dtype, rounding), _cast(call.kwargs, dtype, rounding)
    leaves = _leaves((args, kwargs))
    for leaf in leaves:
        leaf.requires_grad_(True)
    devices = [seed_device] if seed_device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        output = first_float_tensor(module(*args, **kwargs))
    if output is None:
        return None, None
    if fmt is not None and not fmt.scaled:
        output = output.to(fmt.dtype).to(dtype)
    if call.grad_output is None or not leaves or not output.requires_grad:
        return output.detach(), None
    grad_output = _cast(call.grad_output, dtype, rounding)
    grads = torch.autograd.grad(output, leaves, grad_outputs=grad_output, allow_unused=True)
    used = [grad for grad in grads if grad is not None]
    if not used:
        return output.detach(), None
    flat = torch.cat([grad.flatten() for grad in used])
    if fmt is not None and not fmt.scaled:
        flat = flat.to(fmt.dtype).to(dtype)
    return output.detach(), flat.detach()


def layer_errors(module: torch.nn.Module, calls: list[Call], fmt: Format) -> tuple[float | None, float | None]:
    """The worst relative (forward output, input gradient) error over ``calls`` of ``module`` emulated in ``fmt``;
    ``None`` where there is nothing to compare (no floating output, no floating input, no gradient)."""
    reference_dtype = torch.float64 if fmt.name in ("fp32", "fp64") else torch.float32
    compute_dtype = torch.float64 if fmt.name == "fp64" else torch.float32
    reference = _prepare(module, reference_dtype, None)
    emulated = _prepare(module, compute_dtype, fmt)
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    forward: float | None = None
    backward: float | None = None
    for call in calls:
        ref_out, ref_grad = _replay(reference, call, reference_dtype, None, device)
        emu_out, emu_grad = _replay(emulated, call, compute_dtype, fmt, device)
        if ref_out is not None and emu_out is not None:
            forward = max(forward or 0.0, relative_error(emu_out, ref_out))
        if ref_grad is not None and emu_grad is not None:
            backward = max(backward or 0.0, relative_error(emu_grad, ref_grad))
    return forward, backward
