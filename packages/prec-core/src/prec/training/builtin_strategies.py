"""prec-core's own strategies (single, ddp, fsdp), registered as a plugin through the same plugin manager and the
same hook as any installed package: the core has no private way in. Factories import their strategy lazily, so
building the registry does not import torch.distributed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prec.hookspecs import RegisterStrategy, hookimpl

if TYPE_CHECKING:
    from prec.strategies.base import Strategy

#: Accelerators torch.distributed serves here (gloo on CPU, nccl on CUDA); XLA has its own runtime.
DISTRIBUTED_ACCELERATORS = ("cpu", "cuda")
#: Precisions FSDP maps onto its MixedPrecisionPolicy or onto true-precision shards.
FSDP_PRECISIONS = ("32-true", "64-true", "bf16-true", "16-true", "bf16-mixed", "16-mixed")


def single(**kwargs: Any) -> Strategy:
    from prec.strategies.base import Strategy

    return Strategy(**kwargs)


def ddp(**kwargs: Any) -> Strategy:
    from prec.strategies.ddp import DDPStrategy

    return DDPStrategy(**kwargs)


def fsdp(**kwargs: Any) -> Strategy:
    from prec.strategies.fsdp import FSDPStrategy

    return FSDPStrategy(**kwargs)


@hookimpl
def prec_register_strategies(register: RegisterStrategy) -> None:
    register("single", single, description="one process on one device")
    register(
        "ddp",
        ddp,
        accelerators=DISTRIBUTED_ACCELERATORS,
        description="DistributedDataParallel: one process per device (torchrun, or started by prec)",
    )
    register(
        "fsdp",
        fsdp,
        accelerators=DISTRIBUTED_ACCELERATORS,
        precisions=FSDP_PRECISIONS,
        description="FSDP2 fully_shard: parameters, gradients and optimizer state sharded across processes",
    )
