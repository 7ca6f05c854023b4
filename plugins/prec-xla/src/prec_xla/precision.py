"""Precisions on XLA: the core ones, with every optimizer step cut off and executed as one XLA graph.

torch_xla records operations lazily. Without a sync after the optimizer step the graph of every step would be
appended to the previous one and nothing would run until a value is read; :class:`XLAStepMixin` syncs once per
optimizer step, as torch_xla's training recipe does.

``bf16-mixed`` is ``torch.autocast("xla", dtype=torch.bfloat16)``: float32 master weights, bfloat16 matmuls. It is
not the deprecated ``XLA_USE_BF16`` / ``XLA_DOWNCAST_BF16`` switches, which silently turn every float32 tensor
into bfloat16 (that is ``bf16-true`` here, and it is explicit).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer

from prec.accelerator import Accelerator
from prec.precision import MixedPrecision, Precision, TruePrecision
from prec.precision.standard import build_float32, build_mixed, build_true


def _xla_model() -> Any:
    return importlib.import_module("torch_xla.core.xla_model")


def sync() -> None:
    """Cut the lazy graph here and execute it (``torch_xla.sync``; ``xm.mark_step`` on releases without it)."""
    torch_xla = importlib.import_module("torch_xla")
    if hasattr(torch_xla, "sync"):
        torch_xla.sync()
    else:  # pragma: no cover - torch_xla < 2.6
        _xla_model().mark_step()


class XLAStepMixin:
    """Reduce gradients across XLA replicas (a no-op with one), step, then sync so the step's graph runs now."""

    device_type: str | None = "xla"

    def optimizer_step(
        self,
        optimizer: Optimizer,
        closure: Callable[[], Any] | None = None,
        *,
        update: bool = True,
        **kwargs: Any,
    ) -> Any:
        xm = _xla_model()
        if closure is None:
            xm.reduce_gradients(optimizer)
            step_closure = None
        else:  # LBFGS & co. recompute gradients inside step(): reduce them after every evaluation

            def step_closure() -> Any:
                result = closure()
                xm.reduce_gradients(optimizer)
                return result

        result = super().optimizer_step(optimizer, step_closure, update=update, **kwargs)  # type: ignore[misc]
        sync()
        return result


class XLAPrecision(XLAStepMixin, Precision):
    """32-true on XLA (TF32 is a CUDA format: ``tf32`` is accepted and changes nothing here)."""

    def __init__(self, *, tf32: bool = False, keep_float32: Any = ()) -> None:
        self.tf32 = bool(tf32)


class XLAMixedPrecision(XLAStepMixin, MixedPrecision):
    """bf16-mixed on XLA: autocast to bfloat16, float32 weights, no grad scaler (bfloat16 has float32's range)."""


class XLATruePrecision(XLAStepMixin, TruePrecision):
    """bf16-true and 16-true on XLA: weights, activations and gradients all in one 16-bit dtype."""


_NO_SCALER = " (bfloat16 has float32's range, so there is no grad scaler to configure)"


def bf16_mixed(accelerator: Accelerator, **options: Any) -> Precision:
    return build_mixed(
        "bf16-mixed", "xla", torch.bfloat16, options, scaler=False, base=XLAMixedPrecision, note=_NO_SCALER
    )


def bf16_true(accelerator: Accelerator, **options: Any) -> Precision:
    return build_true("bf16-true", torch.bfloat16, "xla", options, base=XLATruePrecision)


def half_true(accelerator: Accelerator, **options: Any) -> Precision:
    return build_true("16-true", torch.float16, "xla", options, base=XLATruePrecision)


def full(accelerator: Accelerator, **options: Any) -> Precision:
    return build_float32(options, base=XLAPrecision)
