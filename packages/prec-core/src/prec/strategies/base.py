"""Strategies: how many processes run, and where the model and data live.

prec-core ships ``single``, ``ddp`` and ``fsdp`` (the last two in :mod:`prec.distributed`, imported only when
selected).

The Trainer talks to a strategy only through the methods below, so a plugin can add one (DDP, FSDP …) without
touching the Trainer. Every method has the single-device meaning by default.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

if TYPE_CHECKING:
    from prec.accelerator import Accelerator
    from prec.precision import Precision


class Strategy:
    """One process, one device. Subclasses override what distribution changes."""

    name: str = "single"

    def __init__(
        self,
        accelerator: Accelerator,
        devices: list[int],
        precision: Precision,
        num_nodes: int = 1,
        **options: Any,
    ) -> None:
        self.accelerator = accelerator
        self.devices = devices
        self.precision = precision
        self.num_nodes = num_nodes
        self.options = options
        self.root_device: torch.device = accelerator.get_device(devices[0] if devices else 0)

    # -- processes ------------------------------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        return 1

    @property
    def global_rank(self) -> int:
        return 0

    @property
    def local_rank(self) -> int:
        return 0

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    def launch(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run ``function(*args)`` on every process this strategy needs (here: in this one) and return rank 0's
        result."""
        _warn_if_launched(self.name)
        return function(*args)

    def setup_environment(self) -> None:
        """Join process groups and select this process's device."""
        self.accelerator.setup_device(self.root_device)

    # -- model and data -------------------------------------------------------------------------------------
    def setup_module(self, module: torch.nn.Module) -> torch.nn.Module:
        """Move the (precision-converted) module to its device and wrap it if the strategy needs to."""
        return module.to(self.root_device)

    def step_function(self, wrapped: torch.nn.Module, module: torch.nn.Module, name: str) -> Callable[..., Any]:
        """The callable the loops call for ``training_step`` & co. A wrapper such as DDP must be called through
        its ``forward`` for gradient synchronisation; one device calls the module's method directly."""
        return getattr(module, name)

    def setup_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        return optimizer

    def setup_dataloader(self, dataloader: DataLoader[Any] | Any) -> Any:
        """Give this process its shard of the data (a distributed sampler under DDP)."""
        return dataloader

    def on_train_epoch_start(self, epoch: int) -> None:
        """Called by the loop before each training epoch's first batch is fetched, with the epoch's index (also
        right after a resume): a distributed sampler draws that epoch's order (``set_epoch``)."""

    @contextlib.contextmanager
    def no_gradient_sync(self, module: torch.nn.Module) -> Iterator[None]:
        """Run the backward of an accumulating micro-batch (not the last before an optimizer step) inside this:
        gradients stay local, and are synchronised once, by the last micro-batch's backward."""
        yield

    def pre_backward(self, tensor: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
        """Called by ``manual_backward`` (manual optimization) just before its backward, with the set-up module:
        the backward runs inside ``training_step``, so a wrapper that prepares gradient synchronisation in its
        forward prepares it here. Returns the tensor to run backward from."""
        return tensor

    def batch_to_device(self, batch: Any) -> Any:
        from prec.precision.base import apply_to_tensors

        device = self.root_device
        return apply_to_tensors(batch, lambda tensor: tensor.to(device, non_blocking=True))

    def module_init_device(self) -> torch.device:
        """The device ``Trainer.init_module`` builds parameters on."""
        return self.root_device

    # -- collectives ----------------------------------------------------------------------------------------
    def barrier(self, name: str | None = None) -> None:
        """Wait for every process."""

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj

    def reduce(self, tensor: torch.Tensor, op: str = "mean") -> torch.Tensor:
        """Reduce a tensor over processes (``"mean"``, ``"sum"``, ``"max"`` or ``"min"``); every rank gets the
        result."""
        return tensor

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        return [obj]

    def reduce_any(self, flag: bool) -> bool:
        """True on every process if ``flag`` is true on any (used to keep skipped steps consistent)."""
        return flag

    # -- checkpoints ----------------------------------------------------------------------------------------
    def module_state_dict(self, module: torch.nn.Module) -> dict[str, Any]:
        """The full state of the user's module, with the keys one process would have. A sharded strategy
        gathers here, so every rank must call it."""
        return module.state_dict()

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer's state as a checkpoint stores it (device strategies return CPU tensors here, so a
        checkpoint loads without their runtime)."""
        return optimizer.state_dict()

    def load_module_state_dict(self, module: torch.nn.Module, state_dict: dict[str, Any]) -> None:
        """Load a full state dict (as :meth:`module_state_dict` returns it) into the set-up module."""
        module.load_state_dict(state_dict, strict=True)

    def save_checkpoint(
        self,
        path: str | os.PathLike[str],
        state: dict[str, Any],
        module: torch.nn.Module,
        optimizers: Sequence[torch.optim.Optimizer],
    ) -> None:
        """Write a checkpoint atomically: ``state`` (everything but the weights and optimizer states: loops,
        precision, RNG, callbacks) plus the module's and optimizers' states in this strategy's layout. Every
        rank calls it. Here: one file, ``state`` with ``state_dict`` and ``optimizer_states`` added, written by
        global rank zero."""
        from prec.checkpoint.io import atomic_save

        full = {
            **state,
            "state_dict": self.module_state_dict(module),
            "optimizer_states": [self.optimizer_state_dict(optimizer) for optimizer in optimizers],
        }
        self.barrier("save_checkpoint")
        if self.is_global_zero:
            atomic_save(full, path)
        self.barrier("save_checkpoint")

    def load_checkpoint(
        self,
        path: str | os.PathLike[str],
        module: torch.nn.Module,
        optimizers: Sequence[torch.optim.Optimizer],
    ) -> dict[str, Any]:
        """Load the weights and optimizer states of a checkpoint :meth:`save_checkpoint` wrote into the set-up
        ``module`` and ``optimizers`` (none: weights only), and return the rest of it (this rank's ``state``)."""
        from prec.checkpoint.io import read_checkpoint

        checkpoint = read_checkpoint(Path(path))
        self.load_module_state_dict(module, checkpoint.pop("state_dict"))
        saved = checkpoint.pop("optimizer_states", [])
        if optimizers:
            if len(saved) != len(optimizers):
                from prec.errors import CheckpointError

                raise CheckpointError(
                    f"checkpoint {path} holds {len(saved)} optimizer states for {len(optimizers)} optimizers."
                )
            for optimizer, optimizer_state in zip(optimizers, saved, strict=True):
                optimizer.load_state_dict(optimizer_state)
        return checkpoint

    def teardown(self) -> None:
        self.accelerator.teardown()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(accelerator={self.accelerator.name!r}, devices={self.devices})"


def _warn_if_launched(name: str) -> None:
    world_size = os.environ.get("WORLD_SIZE", "1")
    if "RANK" in os.environ and world_size.isdigit() and int(world_size) > 1:
        from prec._warnings import warn
        from prec.errors import PrecWarning

        warn(
            f"this process is rank {os.environ['RANK']} of WORLD_SIZE={world_size} started by a launcher, but"
            f" strategy={name!r} trains in this process alone, independently of the others. For one job across"
            " them pass strategy='ddp' (or 'fsdp') with devices=<processes per node>, num_nodes=<nodes>.",
            PrecWarning,
        )
