"""Distributed strategies on torch.distributed: ``ddp`` (DistributedDataParallel) and ``fsdp`` (FSDP2).

Imported only when a Trainer selects one of them, so ``import prec`` and ``prec list`` stay cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prec.strategies.ddp import DDPStrategy
    from prec.strategies.fsdp import FSDPStrategy

__all__ = ["DDPStrategy", "FSDPStrategy"]


def __getattr__(name: str) -> Any:
    if name == "DDPStrategy":
        from prec.strategies.ddp import DDPStrategy

        return DDPStrategy
    if name == "FSDPStrategy":
        from prec.strategies.fsdp import FSDPStrategy

        return FSDPStrategy
    raise AttributeError(f"module 'prec.distributed' has no attribute {name!r}")
