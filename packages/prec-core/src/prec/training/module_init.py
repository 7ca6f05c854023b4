"""Where a run's modules are built: their parameters are born on the device, in the precision's dtype."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prec.training.run_setup import SkipInit

if TYPE_CHECKING:
    from prec.precision import Precision
    from prec.strategies.base import Strategy

__all__ = ["module_init"]


@contextlib.contextmanager
def module_init(strategy: Strategy, precision: Precision, empty_init: bool | None) -> Iterator[None]:
    """The block of ``Trainer.init_module``: the strategy's device first, then (with ``empty_init``) no weight
    initialisation, then the precision's dtype, so bf16-true never materialises float32 weights."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(strategy.module_init_device())
        if empty_init:
            stack.enter_context(SkipInit())
        stack.enter_context(precision.module_init_context())
        yield
