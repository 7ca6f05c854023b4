"""``strategy="ddp"``: one process per device, each with a full model copy and its shard of the data.

torch.distributed does the work: gloo on CPU, nccl on CUDA, ``DistributedDataParallel`` all-reduces gradients
during backward. The job comes from ``torchrun`` (or any launcher that sets the standard variables), or, run as
a plain script with ``devices=N > 1``, from prec re-running the script N-1 times (see
:mod:`prec.cluster.environment`).

Precision under DDP: autocast runs per rank. A grad scaler is swapped for torch's ``ShardedGradScaler`` (same
state, same checkpoint format), whose inf/NaN check is all-reduced: all ranks skip the same steps and keep the
same scale even when a non-finite gradient appears on one rank only after DDP's all-reduce (a hook, a clip).

Manual optimization: ``manual_backward`` runs inside ``training_step``, before DDP's forward would have prepared
its reducer. So DDP's forward runs first on an empty step (buffers broadcast, buckets rebuilt; inside ``no_sync``,
so it expects no backward), ``training_step`` runs on the module, and each ``manual_backward`` prepares DDP's
reducer for its own backward (:meth:`DDPStrategy.pre_backward`), unless DDP's ``no_sync`` is active: then the
gradients stay local. ``find_unused_parameters`` defaults to True there (a loss may reach only some parameters:
one optimizer's in a GAN); ``static_graph`` cannot work (its first backward is deferred to DDP's output).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from typing_extensions import override

from prec.cluster.data import distribute_dataloader
from prec.cluster.detection import adopt_cluster_environment
from prec.cluster.environment import (
    LocalLauncher,
    ProcessEnvironment,
    launched_by_launcher,
    launcher_run,
    read_environment,
    wait_for_started_processes,
)
from prec.cluster.rendezvous import join_store
from prec.cluster.rendezvous import rendezvous_timeout as resolve_rendezvous_timeout
from prec.errors import ConfigurationError
from prec.model.steps import step_caller
from prec.strategies.base import Strategy

if TYPE_CHECKING:
    from prec.accelerator import Accelerator
    from prec.precision import Precision

DEFAULT_TIMEOUT = timedelta(minutes=30)
_REDUCE_OPS = {"mean": dist.ReduceOp.SUM, "sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
_NARROW = (torch.float16, torch.bfloat16)  # reduced in float32, returned in their own dtype


class StepForward(torch.nn.Module):
    """Routes ``forward(name, *args)`` to ``module.<name>(*args)``: the step then runs inside the wrapper's
    forward, where DDP prepares its gradient reducer and FSDP gathers the root's parameters.

    ``name=None`` runs nothing: the wrapper's own work before a step that runs outside it (manual optimization).
    ``name=ANCHOR`` returns a zero like ``args[0]`` that requires grad: added to a loss, it carries the wrapper's
    pre-backward hook into that loss's backward."""

    ANCHOR = "__backward_anchor__"

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, name: str | None, *args: Any, **kwargs: Any) -> Any:
        if name is None:
            return None
        if name == self.ANCHOR:
            return torch.zeros_like(args[0]).requires_grad_()
        return getattr(self.module, name)(*args, **kwargs)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside DDP and :class:`StepForward` wrappers."""
    while isinstance(module, (DistributedDataParallel, StepForward)):
        module = module.module
    return module


class DDPStrategy(Strategy):
    """Distributed data parallel over ``len(devices) * num_nodes`` processes.

    Args:
        process_group_backend: ``"gloo"`` or ``"nccl"``; by default nccl for CUDA devices, gloo otherwise.
        timeout: how long a collective waits for the other ranks before failing (a hang becomes an error).
        rendezvous_timeout: seconds (or a timedelta) every rank gets to join the job at its start; by default
            ``PREC_RENDEZVOUS_TIMEOUT`` or 300 s (see :mod:`prec.cluster.rendezvous`).
        ddp_options: passed to ``DistributedDataParallel`` (``find_unused_parameters``, ``static_graph`` …).
    """

    name = "ddp"

    def __init__(
        self,
        accelerator: Accelerator,
        devices: list[int],
        precision: Precision,
        num_nodes: int = 1,
        *,
        process_group_backend: str | None = None,
        timeout: timedelta = DEFAULT_TIMEOUT,
        rendezvous_timeout: float | timedelta | None = None,
        **ddp_options: Any,
    ) -> None:
        super().__init__(accelerator, devices, precision, num_nodes)
        self.process_group_backend = process_group_backend
        self.timeout = timeout
        self.rendezvous_seconds = resolve_rendezvous_timeout(rendezvous_timeout)
        self.ddp_options = ddp_options
        self._launcher: LocalLauncher | None = None
        self._original_scaler: torch.amp.GradScaler | None = None
        self._stage: str | None = None
        self._manual = False  # this run trains with manual optimization (set by setup_module)
        self._train_epoch: int | None = None  # set by on_train_epoch_start
        self._epochs_started = 0
        self._env = self._describe_job()
        self.root_device = accelerator.get_device(devices[self._env.local_rank])

    def _describe_job(self) -> ProcessEnvironment:
        expected = len(self.devices) * self.num_nodes
        self.cluster = adopt_cluster_environment(expected)
        if launched_by_launcher():
            env = read_environment()
            if env.world_size != expected:
                raise ConfigurationError(
                    f"the launcher started WORLD_SIZE={env.world_size} processes, but devices={len(self.devices)}"
                    f" x num_nodes={self.num_nodes} = {expected}. Make them agree (torchrun --nproc_per_node"
                    " equals devices, --nnodes equals num_nodes)."
                )
            if env.local_rank >= len(self.devices):
                raise ConfigurationError(
                    f"LOCAL_RANK={env.local_rank} but devices={self.devices} has {len(self.devices)} entries:"
                    " start one process per device on each node."
                )
            return env
        if self.num_nodes > 1:
            raise ConfigurationError(
                f"num_nodes={self.num_nodes} needs a launcher on every node, e.g. `torchrun --nnodes"
                f" {self.num_nodes} --nproc_per_node {len(self.devices)} --node_rank <0..{self.num_nodes - 1}>"
                " --master_addr <node 0 address> --master_port 29500 train.py`."
            )
        return ProcessEnvironment(0, 0, expected, len(self.devices), 0)

    # -- processes ------------------------------------------------------------------------------------------
    @property
    @override
    def world_size(self) -> int:
        return self._env.world_size

    @property
    @override
    def global_rank(self) -> int:
        return self._env.global_rank

    @property
    @override
    def local_rank(self) -> int:
        return self._env.local_rank

    @property
    def node_rank(self) -> int:
        return self._env.node_rank

    @override
    def launch(self, function: Callable[..., Any], *args: Any) -> Any:
        """Start the local processes if no launcher did (this process is rank 0), then run ``function`` here."""
        self._stage = args[0] if args and isinstance(args[0], str) else None
        if self.world_size > 1 and not launched_by_launcher() and not dist.is_initialized():
            self._launcher = LocalLauncher(self.world_size)
            self._launcher.start()
            self._env = read_environment()
        with launcher_run():  # in a job this process started: watched, and the others stopped if this run fails
            return function(*args)

    @override
    def setup_environment(self) -> None:
        super().setup_environment()
        if not dist.is_initialized():
            backend = self.process_group_backend or ("nccl" if self.root_device.type == "cuda" else "gloo")
            # One process that no launcher started (devices=1) still needs a group: a private store on a port
            # the system picks.
            env = self._env if launched_by_launcher() else ProcessEnvironment(0, 0, 1, 1, 0, "127.0.0.1", 0)
            rank, world_size = self.global_rank, self.world_size
            store = join_store(env.master_addr, env.master_port, rank, world_size, self.rendezvous_seconds)
            dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=self.timeout)
            store.set_timeout(self.timeout)  # from here on a wait on the store is a collective's wait
            atexit.register(_destroy_process_group)
        elif dist.get_world_size() != self.world_size or dist.get_rank() != self.global_rank:
            raise ConfigurationError(
                f"a process group of {dist.get_world_size()} processes (this one rank {dist.get_rank()}) already"
                f" exists, but this Trainer expects {self.world_size} (rank {self.global_rank})."
            )
        self._synchronise_scaler()

    def _synchronise_scaler(self) -> None:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        scaler = getattr(self.precision, "scaler", None)
        if not isinstance(scaler, torch.amp.GradScaler) or isinstance(scaler, ShardedGradScaler):
            return
        if not scaler.is_enabled():
            return
        # Everything comes through GradScaler's public getters and state_dict; the device is this process's
        # (the precision's scaler belongs to the same accelerator), so no private attribute is read.
        synced = ShardedGradScaler(
            device=self.root_device.type,
            init_scale=scaler.get_scale(),
            growth_factor=scaler.get_growth_factor(),
            backoff_factor=scaler.get_backoff_factor(),
            growth_interval=scaler.get_growth_interval(),
        )
        synced.load_state_dict(scaler.state_dict())
        self._original_scaler = scaler
        self.precision.scaler = synced  # type: ignore[attr-defined]

    def _restore_scaler(self) -> None:
        original, self._original_scaler = self._original_scaler, None
        if original is not None:
            original.load_state_dict(self.precision.scaler.state_dict())  # type: ignore[attr-defined]
            self.precision.scaler = original  # type: ignore[attr-defined]

    @override
    def teardown(self) -> None:
        """Keep the process group (a later Trainer in this script joins it); it closes at exit."""
        self._restore_scaler()
        super().teardown()

    # -- model and data -------------------------------------------------------------------------------------
    def _check_optimization(self, module: torch.nn.Module) -> None:
        """Note whether this run is a fit with manual optimization (see the module docstring)."""
        self._manual = self._stage == "fit" and not getattr(module, "automatic_optimization", True)

    @override
    def setup_module(self, module: torch.nn.Module) -> torch.nn.Module:
        self._check_optimization(module)
        module = module.to(self.root_device)
        if not any(parameter.requires_grad for parameter in module.parameters()):
            return module  # nothing to synchronise: evaluation of a frozen model
        options = dict(self.ddp_options)
        if self._manual:
            if options.get("static_graph"):
                raise ConfigurationError(
                    f"strategy={self.name!r} with static_graph=True cannot train with manual optimization"
                    f" ({type(module).__name__}.automatic_optimization is False): a static graph's first backward"
                    " is reduced through DDP's output, which manual_backward runs before. Leave static_graph unset."
                )
            options.setdefault("find_unused_parameters", True)
        device_ids = [self.root_device.index] if self.root_device.type == "cuda" else None
        return DistributedDataParallel(StepForward(module), device_ids=device_ids, **options)

    @override
    def step_function(self, wrapped: torch.nn.Module, module: torch.nn.Module, name: str) -> Callable[..., Any]:
        if name == "training_step" and isinstance(wrapped, DistributedDataParallel):
            if self._manual:
                return functools.partial(_manual_step, wrapped, step_caller(getattr(module, name)))
            return functools.partial(wrapped, name)
        return getattr(module, name)

    @override
    def pre_backward(self, tensor: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
        """Prepare DDP's reducer for the backward ``manual_backward`` is about to run, as DDP's forward does for
        the backward after it; inside DDP's ``no_sync`` nothing is prepared and the gradients stay local."""
        if not (self._manual and isinstance(module, DistributedDataParallel)):
            return tensor
        if torch.is_grad_enabled() and module.require_backward_grad_sync:
            module.require_forward_param_sync = True  # the next step's forward broadcasts the buffers again
            reducer = module.reducer
            # torch's reducer API, called as DDP's forward calls it: rebuild the buckets once, in the gradient
            # order the first backward recorded (and fail clearly if the last backward left a reduction open).
            reducer._rebuild_buckets()
            search = module.find_unused_parameters and not module.static_graph
            reducer.prepare_for_backward([tensor] if search else [])
        return tensor

    @override
    def setup_dataloader(self, dataloader: Any) -> Any:
        if self.world_size == 1:
            return dataloader
        return distribute_dataloader(dataloader, self.world_size, self.global_rank, self._sampler_epoch)

    @override
    def on_train_epoch_start(self, epoch: int) -> None:
        self._train_epoch = epoch

    def _sampler_epoch(self) -> int:
        """The epoch the loop announced (:meth:`on_train_epoch_start`), else a count of passes."""
        if self._train_epoch is not None:
            return self._train_epoch
        self._epochs_started += 1
        return self._epochs_started - 1

    @override
    @contextlib.contextmanager
    def no_gradient_sync(self, module: torch.nn.Module) -> Iterator[None]:
        """DDP's ``no_sync``: enter it before the micro-batch's forward (DDP decides there) and leave it after
        its backward."""
        if isinstance(module, DistributedDataParallel):
            with module.no_sync():
                yield
        else:
            yield

    # -- collectives ----------------------------------------------------------------------------------------
    def _active(self) -> bool:
        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    @override
    def barrier(self, name: str | None = None) -> None:
        if self._active():
            dist.barrier()

    @override
    def broadcast(self, obj: Any, src: int = 0) -> Any:
        if not self._active():
            return obj
        holder = [obj]
        dist.broadcast_object_list(holder, src=src)
        return holder[0]

    @override
    def reduce(self, tensor: torch.Tensor, op: str = "mean") -> torch.Tensor:
        if op not in _REDUCE_OPS:
            raise ConfigurationError(f"reduce op={op!r} is not supported; use one of {', '.join(_REDUCE_OPS)}.")
        if not self._active():
            return tensor
        result = tensor.detach().clone().to(torch.float32 if tensor.dtype in _NARROW else tensor.dtype)
        dist.all_reduce(result, op=_REDUCE_OPS[op])
        if op == "mean":
            result = result / dist.get_world_size()
        return result.to(tensor.dtype)

    @override
    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self._active():
            return [obj]
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, obj)
        return gathered

    @override
    def reduce_any(self, flag: bool) -> bool:
        if not self._active():
            return flag
        device = self.root_device if self.root_device.type == "cuda" else torch.device("cpu")
        value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    # -- checkpoints ----------------------------------------------------------------------------------------
    @override
    def module_state_dict(self, module: torch.nn.Module) -> dict[str, Any]:
        """The user's module state: the same keys as in a single process (no ``module.`` prefixes)."""
        return unwrap(module).state_dict()

    @override
    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(accelerator={self.accelerator.name!r}, devices={self.devices},"
            f" num_nodes={self.num_nodes}, rank={self.global_rank}/{self.world_size})"
        )


def _manual_step(ddp: DistributedDataParallel, step: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A manual-optimization ``training_step``: DDP's per-step work in its forward (buffers broadcast, buckets
    rebuilt) on an empty step that expects no backward, then the step on the module, outside DDP's forward, so
    that DDP's forward cannot prepare a backward that ``manual_backward`` has already run."""
    with ddp.no_sync():
        ddp(None)
    return step(*args, **kwargs)


def _destroy_process_group() -> None:
    wait_for_started_processes()  # rank 0 hosts the store: the ranks it started exit before it closes
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
