"""``strategy="fsdp"``: FSDP2 (``torch.distributed.fsdp.fully_shard``), parameters sharded across ranks.

The precision maps onto FSDP's own machinery:

* bf16-mixed / 16-mixed: ``MixedPrecisionPolicy(param_dtype=<16-bit dtype>, reduce_dtype=float32)``: each unit
  all-gathers its parameters in 16 bits for compute, gradients are reduced in float32 (``reduce_dtype``: bfloat16
  on request) onto float32 shards
  (autocast still covers the ops outside the sharded units). 16-mixed's grad scaler becomes torch's
  ``ShardedGradScaler``, which unscales sharded (DTensor) gradients and all-reduces the inf/NaN check.
* 32-true and the *-true precisions: no policy; the parameters were cast by the precision first, so the shards
  hold true-precision parameters.

Sharding: ``configure_model`` is the place to shard (``fully_shard(block, mp_policy=self.trainer.strategy
.mp_policy)`` on each block of a large model); the strategy then shards the root. ``shard_modules`` (module
classes, or a predicate) shards matching submodules automatically. Under FSDP the user's module holds DTensor
shards after setup; :meth:`FSDPStrategy.module_state_dict` gathers the full tensors (a collective: call it on
every rank).

Manual optimization: ``training_step`` runs after an empty forward of the root (which gathers the root unit's
parameters), not inside it, so that each ``manual_backward`` is a backward of its own: the loss carries the root's
pre-backward hook (:meth:`FSDPStrategy.pre_backward`) and the backward ends with FSDP's post-backward
reduce-scatter. The root unit stays gathered through the step (a second forward after a backward sees its
weights); every optimizer step gathers it again from the updated shards.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from typing_extensions import override

from prec.errors import ConfigurationError
from prec.model.steps import step_caller
from prec.options import Option
from prec.precision import MixedPrecision
from prec.precision.policy import fsdp_policy_groups
from prec.strategies.ddp import DDPStrategy, StepForward, unwrap

_ROOT_ATTRIBUTE = "_prec_fsdp_root"
ShardPolicy = Iterable[type[torch.nn.Module]] | Callable[[torch.nn.Module], bool] | None


#: The dtypes gradients may be reduced in (``FSDPStrategy(reduce_dtype=...)``).
REDUCE_DTYPES = (torch.float32, torch.bfloat16)
REDUCE_DTYPE = Option(
    "reduce_dtype", "torch.float32 or torch.bfloat16", lambda value: value in REDUCE_DTYPES, torch.float32
)


def mixed_precision_policy(precision: Any, reduce_dtype: torch.dtype = torch.float32) -> MixedPrecisionPolicy:
    """FSDP's policy for a prec precision (see the module docstring); ``reduce_dtype`` applies to mixed
    precisions, whose float32 shards receive the reduced gradients."""
    if isinstance(precision, MixedPrecision):
        return MixedPrecisionPolicy(param_dtype=precision.compute_dtype, reduce_dtype=reduce_dtype)
    return MixedPrecisionPolicy()


class FSDPStrategy(DDPStrategy):
    """Fully sharded data parallel (FSDP2) over ``len(devices) * num_nodes`` processes.

    Args:
        shard_modules: module classes (or a predicate) whose instances become their own FSDP unit.
        reshard_after_forward: free gathered parameters after forward (less memory, one more all-gather).
        reduce_dtype: the dtype gradients are reduce-scattered in under the mixed precisions (bf16-mixed,
            16-mixed): ``torch.float32`` (default) sums every rank's contribution exactly enough for float32
            shards; ``torch.bfloat16`` halves the gradient traffic and the reduce buffers, at the price of 8
            mantissa bits in the sum (the error grows with the number of ranks, and small gradients next to
            large ones are lost). The -true precisions reduce in their weights' dtype, and ``keep_float32``
            modules always in float32.
        process_group_backend, timeout: as for :class:`prec.distributed.DDPStrategy`.
    """

    name = "fsdp"

    def __init__(
        self,
        *args: Any,
        shard_modules: ShardPolicy = None,
        reshard_after_forward: bool = True,
        reduce_dtype: torch.dtype = torch.float32,
        **kwargs: Any,
    ) -> None:
        if not REDUCE_DTYPE.check(reduce_dtype):
            raise ConfigurationError(f"FSDPStrategy(reduce_dtype={reduce_dtype!r}) must be {REDUCE_DTYPE.expected}.")
        super().__init__(*args, **kwargs)
        self.reduce_dtype: torch.dtype = reduce_dtype
        if shard_modules is None or callable(shard_modules):
            self._should_shard = shard_modules
        else:
            classes = tuple(shard_modules)
            self._should_shard = lambda module: isinstance(module, classes)
        self.reshard_after_forward = reshard_after_forward
        self._root: torch.nn.Module | None = None

    @property
    def mp_policy(self) -> MixedPrecisionPolicy:
        """The policy for this run's precision; pass it to ``fully_shard`` in ``configure_model``."""
        return mixed_precision_policy(self.precision, self.reduce_dtype)

    @override
    def setup_module(self, module: torch.nn.Module) -> torch.nn.Module:
        self._check_optimization(module)
        root = module.__dict__.get(_ROOT_ATTRIBUTE)
        if isinstance(root, StepForward):  # sharded by an earlier run (fit, then validate): shard only once
            self._root = root
            self._keep_root_gathered(root)
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
        # Modules the precision keeps in float32 (keep_float32) get their own float32 policy, before the root's.
        for kept, extra in fsdp_policy_groups(module, self.precision):
            if not isinstance(kept, FSDPModule):
                fully_shard(kept, **{**options, **extra})
        if self._should_shard is not None:
            for submodule in list(module.modules()):
                if submodule is not module and not isinstance(submodule, FSDPModule) and self._should_shard(submodule):
                    fully_shard(submodule, **options)
        root = StepForward(module)
        fully_shard(root, **options)
        module.__dict__[_ROOT_ATTRIBUTE] = root  # plain attribute: not a submodule, no reference cycle in modules()
        self._root = root
        self._keep_root_gathered(root)
        return root

    def _keep_root_gathered(self, root: torch.nn.Module) -> None:
        """Under manual optimization the root unit stays gathered after its empty forward and after each backward
        (the step runs forward on it, and may again after a backward); otherwise as configured."""
        if isinstance(root, FSDPModule):
            root.set_reshard_after_forward(self.reshard_after_forward and not self._manual, recurse=False)
            root.set_reshard_after_backward(not self._manual, recurse=False)

    @override
    def step_function(self, wrapped: torch.nn.Module, module: torch.nn.Module, name: str) -> Callable[..., Any]:
        """Every step runs inside the root's forward, where FSDP gathers the root unit's parameters; a manual
        ``training_step`` runs after it (see the module docstring)."""
        if isinstance(wrapped, StepForward):
            if name == "training_step" and self._manual:
                return functools.partial(_gathered_step, wrapped, step_caller(getattr(module, name)))
            return functools.partial(wrapped, name)
        return getattr(module, name)

    @override
    def pre_backward(self, tensor: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
        """Add a zero from the root's forward to the loss: its backward then runs FSDP's pre-backward hook and
        ends with FSDP's post-backward (every unit's gradients reduce-scattered, or kept while
        :meth:`no_gradient_sync` is active)."""
        if not (self._manual and isinstance(module, StepForward) and torch.is_grad_enabled()):
            return tensor
        # The anchor's input is detached: FSDP must not register a post-backward on the loss (it would fire first).
        anchor = module(StepForward.ANCHOR, tensor.detach())
        return tensor + anchor.to(tensor.dtype)

    @override
    @contextlib.contextmanager
    def no_gradient_sync(self, module: torch.nn.Module) -> Iterator[None]:
        """FSDP2's ``set_requires_gradient_sync(False)`` on the root (and every unit below it): gradients
        accumulate unsharded-and-unreduced until the last micro-batch's backward reduce-scatters them."""
        if not isinstance(module, FSDPModule):
            yield
            return
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)

    @override
    def setup_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Let ``optimizer.load_state_dict`` take a full (single-process) state: each rank keeps its shards. Under
        manual optimization each step also gathers the root unit again from its updated shards."""
        optimizer.register_load_state_dict_pre_hook(_shard_full_optimizer_state)
        if self._manual:
            optimizer.register_step_post_hook(self._regather_root)
        return optimizer

    def _regather_root(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """The gathered root holds the weights from before the step: reshard (free it), gather the new ones.
        Gathering also copies the shards' ``requires_grad`` onto the gathered parameters."""
        root = self._root
        if isinstance(root, FSDPModule):
            root.reshard()
            root.unshard()

    # -- checkpoints ----------------------------------------------------------------------------------------
    @override
    def save_checkpoint(
        self,
        path: str | os.PathLike[str],
        state: dict[str, Any],
        module: torch.nn.Module,
        optimizers: Sequence[torch.optim.Optimizer],
    ) -> None:
        """A sharded directory (:mod:`prec.checkpoint.sharded`): each rank writes its own shards
        and its own ``state``; nothing is gathered."""
        from prec.checkpoint.sharded import save_sharded

        save_sharded(path, unwrap(module), optimizers, state, self.precision.checkpoint_parameters)

    @override
    def load_checkpoint(
        self,
        path: str | os.PathLike[str],
        module: torch.nn.Module,
        optimizers: Sequence[torch.optim.Optimizer],
    ) -> dict[str, Any]:
        """A sharded directory, or a single-process file (read on rank 0 and broadcast into the shards; every
        rank gets its state)."""
        from prec.checkpoint.io import read_checkpoint
        from prec.checkpoint.sharded import is_sharded_checkpoint, load_full_into_sharded, load_sharded

        view = self.precision.checkpoint_parameters
        if is_sharded_checkpoint(path):
            return load_sharded(path, unwrap(module), optimizers, view)
        checkpoint = read_checkpoint(path) if self.is_global_zero else None
        load_full_into_sharded(checkpoint, unwrap(module), optimizers, view)
        rest = {k: v for k, v in (checkpoint or {}).items() if k not in ("state_dict", "optimizer_states")}
        return self.broadcast(rest)

    @override
    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The single-process layout, full tensors on the CPU (a collective: call on every rank)."""
        state = optimizer.state_dict()
        return {
            "state": {index: {k: _full(v) for k, v in values.items()} for index, values in state["state"].items()},
            "param_groups": state["param_groups"],
        }

    @override
    def module_state_dict(self, module: torch.nn.Module) -> dict[str, Any]:
        """Full (unsharded) tensors on the CPU, same keys as one process. A collective: call on every rank."""
        state = unwrap(module).state_dict()
        return {key: _full(value) for key, value in state.items()}

    @override
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


def _gathered_step(root: StepForward, step: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A manual-optimization ``training_step``: the root's forward on an empty step (FSDP gathers the root unit,
    and the first time makes the root FSDP's root), then the step on the module."""
    root(None)
    return step(*args, **kwargs)


def _shard_full_optimizer_state(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    """A load_state_dict pre-hook: full-size state tensors of sharded (DTensor) parameters become their shards.
    Every rank loads the same full state, so ``distribute_tensor`` keeps the ranks consistent. A state's key is
    matched to its parameter by position in the saved groups' ``params``, as ``Optimizer.load_state_dict`` does:
    indices in prec's checkpoints, parameter names in what ``set_state_dict`` (a sharded resume) passes."""
    parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    saved = [key for group in state_dict["param_groups"] for key in group["params"]]
    position = {key: index for index, key in enumerate(saved)}
    converted: dict[Any, Any] = {}
    for index, values in state_dict["state"].items():
        where = position.get(index)
        parameter = parameters[where] if where is not None and where < len(parameters) else None
        if not isinstance(parameter, DTensor):
            converted[index] = values
            continue
        converted[index] = {
            key: distribute_tensor(value.to(parameter.device), parameter.device_mesh, parameter.placements)
            if isinstance(value, torch.Tensor) and not isinstance(value, DTensor) and value.shape == parameter.shape
            else value
            for key, value in values.items()
        }
    return {**state_dict, "state": converted}


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
