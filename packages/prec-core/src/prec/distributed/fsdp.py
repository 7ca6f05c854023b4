"""``strategy="fsdp"``: FSDP2 (``torch.distributed.fsdp.fully_shard``), parameters sharded across ranks.

The precision maps onto FSDP's own machinery:

* bf16-mixed / 16-mixed: ``MixedPrecisionPolicy(param_dtype=<16-bit dtype>, reduce_dtype=float32)``: each unit
  all-gathers its parameters in 16 bits for compute, gradients are reduced in float32 onto float32 shards
  (autocast still covers the ops outside the sharded units). 16-mixed's grad scaler becomes torch's
  ``ShardedGradScaler``, which unscales sharded (DTensor) gradients and all-reduces the inf/NaN check.
* 32-true and the *-true precisions: no policy; the parameters were cast by the precision first, so the shards
  hold true-precision parameters.

Sharding: ``configure_model`` is the place to shard (``fully_shard(block, mp_policy=self.trainer.strategy
.mp_policy)`` on each block of a large model); the strategy then shards the root. ``shard_modules`` (module
classes, or a predicate) shards matching submodules automatically. Under FSDP the user's module holds DTensor
shards after setup; :meth:`FSDPStrategy.module_state_dict` gathers the full tensors (a collective: call it on
every rank).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from prec.distributed.ddp import DDPStrategy, StepForward, unwrap
from prec.errors import ConfigurationError
from prec.precision import MixedPrecision

_ROOT_ATTRIBUTE = "_prec_fsdp_root"
ShardPolicy = Iterable[type[torch.nn.Module]] | Callable[[torch.nn.Module], bool] | None


def mixed_precision_policy(precision: Any) -> MixedPrecisionPolicy:
    """FSDP's policy for a prec precision (see the module docstring)."""
    if isinstance(precision, MixedPrecision):
        return MixedPrecisionPolicy(param_dtype=precision.compute_dtype, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


class FSDPStrategy(DDPStrategy):
    """Fully sharded data parallel (FSDP2) over ``len(devices) * num_nodes`` processes.

    Args:
        shard_modules: module classes (or a predicate) whose instances become their own FSDP unit.
        reshard_after_forward: free gathered parameters after forward (less memory, one more all-gather).
        process_group_backend, timeout: as for :class:`prec.distributed.DDPStrategy`.
    """

    name = "fsdp"

    def __init__(
        self, *args: Any, shard_modules: ShardPolicy = None, reshard_after_forward: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        if shard_modules is None or callable(shard_modules):
            self._should_shard = shard_modules
        else:
            classes = tuple(shard_modules)
            self._should_shard = lambda module: isinstance(module, classes)
        self.reshard_after_forward = reshard_after_forward
        self._root: torch.nn.Module | None = None

    def launch(self, function: Callable[..., Any], *args: Any) -> Any:
        # The Trainer launches ``_run_stage(stage, model, ckpt_path, *loaders)``.
        if len(args) > 2 and args[2] is not None:
            raise ConfigurationError(
                "strategy='fsdp' cannot load ckpt_path yet: a checkpoint's full tensors must be scattered into the"
                " parameter shards. Resume under strategy='ddp' or in one process (the checkpoint format is the"
                " same), or load weights with trainer.strategy.load_module_state_dict."
            )
        return super().launch(function, *args)

    @property
    def mp_policy(self) -> MixedPrecisionPolicy:
        """The policy for this run's precision; pass it to ``fully_shard`` in ``configure_model``."""
        return mixed_precision_policy(self.precision)

    def setup_module(self, module: torch.nn.Module) -> torch.nn.Module:
        self._check_optimization(module)
        root = module.__dict__.get(_ROOT_ATTRIBUTE)
        if isinstance(root, StepForward):  # sharded by an earlier run (fit, then validate): shard only once
            self._root = root
            return root
        meta = [name for name, parameter in module.named_parameters() if parameter.is_meta]
        if meta:
            raise ConfigurationError(
                f"{len(meta)} parameters are still on the meta device ({', '.join(meta[:3])} …). Build on the meta"
                " device in configure_model, shard there, then materialise: module.to_empty(device=...) and"
                " initialise the weights (or load them)."
            )
        module = module.to(self.root_device)
        _broadcast_unsharded(module)  # every rank shards the same weights, as DDP's constructor ensures
        options = {"mp_policy": self.mp_policy, "reshard_after_forward": self.reshard_after_forward}
        if self._should_shard is not None:
            for submodule in list(module.modules()):
                if submodule is not module and not isinstance(submodule, FSDPModule) and self._should_shard(submodule):
                    fully_shard(submodule, **options)
        root = StepForward(module)
        fully_shard(root, **options)
        module.__dict__[_ROOT_ATTRIBUTE] = root  # plain attribute: not a submodule, no reference cycle in modules()
        self._root = root
        return root

    def step_function(self, wrapped: torch.nn.Module, module: torch.nn.Module, name: str) -> Callable[..., Any]:
        """Every step runs inside the root's forward, where FSDP gathers the root unit's parameters."""
        if isinstance(wrapped, StepForward):
            return functools.partial(wrapped, name)
        return getattr(module, name)

    # -- checkpoints ----------------------------------------------------------------------------------------
    def module_state_dict(self, module: torch.nn.Module) -> dict[str, Any]:
        """Full (unsharded) tensors on the CPU, same keys as one process. A collective: call on every rank."""
        state = unwrap(module).state_dict()
        return {key: _full(value) for key, value in state.items()}

    def load_module_state_dict(self, module: torch.nn.Module, state_dict: dict[str, Any]) -> None:
        """Load a full state dict (as :meth:`module_state_dict` returns) into the sharded module."""
        target = unwrap(module)
        current = target.state_dict()
        missing = sorted(set(current) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(current))
        if missing or unexpected:
            raise RuntimeError(f"state dict does not fit: missing {missing}, unexpected {unexpected}")
        with torch.no_grad():
            for key, value in current.items():
                full = state_dict[key]
                if isinstance(value, DTensor):
                    shard = distribute_tensor(full.to(value.device, value.dtype), value.device_mesh, value.placements)
                    value.to_local().copy_(shard.to_local())
                elif isinstance(value, torch.Tensor):
                    value.copy_(full)


def _full(value: Any) -> Any:
    if isinstance(value, DTensor):
        return value.full_tensor().cpu()
    return value.cpu() if isinstance(value, torch.Tensor) else value


def _broadcast_unsharded(module: torch.nn.Module) -> None:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if not isinstance(tensor, DTensor):
                dist.broadcast(tensor.data, src=0)
