"""``single_xla``: one process on one XLA device, evaluation that works, checkpoints that load without torch_xla.

prec's ``single`` strategy also trains on XLA (it moves the module and each batch to the XLA device), but its
state dicts hold XLA tensors, which pickle as "rebuild me on device xla:0": a plain ``torch.load`` of them fails
on a machine without torch_xla unless the reader knows to pass ``map_location="cpu"``. This strategy hands out
state dicts of CPU tensors, which load anywhere. Its evaluation and predict steps run under ``no_grad``, since
torch_xla fails under the ``inference_mode`` prec's loops use.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from prec.precision import apply_to_tensors
from prec.strategies.base import Strategy
from prec_xla.precision import sync


def to_cpu(data: Any) -> Any:
    """Copy every tensor in a nested state dict to the CPU (after one sync, so pending values are computed in a
    single graph execution rather than one per tensor)."""
    sync()
    return apply_to_tensors(data, lambda tensor: tensor.detach().cpu())


class XLASingleStrategy(Strategy):
    """One process, one XLA device; :meth:`module_state_dict` and :meth:`optimizer_state_dict` return CPU tensors."""

    name = "single_xla"

    def batch_to_device(self, batch: Any) -> Any:
        """Cut the lazy graph at every batch boundary, as torch_xla's device loader does: validation and predict
        steps (which have no optimizer step to sync on) then run as one small graph per batch instead of one graph
        that grows with the epoch. In training the optimizer step already synced, so this costs nothing there."""
        sync()
        with torch.inference_mode(False):
            return super().batch_to_device(batch)

    def step_function(self, wrapped: torch.nn.Module, module: torch.nn.Module, name: str) -> Callable[..., Any]:
        """Run evaluation and predict steps under ``no_grad`` instead of ``inference_mode``: torch_xla cannot
        take views of tensors under ``inference_mode`` (``RuntimeError: Cannot set version_counter for inference
        tensor`` from the first ``Linear``)."""
        step = super().step_function(wrapped, module, name)
        if name == "training_step":
            return step

        @functools.wraps(step)
        def without_inference_mode(*args: Any, **kwargs: Any) -> Any:
            with torch.inference_mode(False), torch.no_grad():
                return step(*args, **kwargs)

        return without_inference_mode

    def module_state_dict(self, module: torch.nn.Module) -> dict[str, Any]:
        return to_cpu(module.state_dict())

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer's state (Adam moments …) with CPU tensors, for the same reason as the module's."""
        return to_cpu(optimizer.state_dict())
